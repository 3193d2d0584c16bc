variable "name" {
  description = "Name prefix for every resource of the origin tier (e.g. townsquare-tier)."
  type        = string
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster the service runs in."
  type        = string
}

variable "image" {
  description = "Container image of townsquare (the one image for every service)."
  type        = string
}

variable "cpu_architecture" {
  description = "CPU architecture of the Fargate task: X86_64 or ARM64 (the image must be built for it)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "cpu" {
  description = "Fargate CPU units per tier task. The process is one event loop: more than one vCPU buys nothing, more tasks do."
  type        = number
  default     = 1024
}

variable "memory" {
  description = "Fargate memory (MiB) per tier task."
  type        = number
  default     = 2048
}

variable "vpc_id" {
  description = "VPC the tier and its internal load balancer live in."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the internal ALB and the tasks (they need a NAT gateway or VPC endpoints for ECR, S3, Secrets Manager and logs)."
  type        = list(string)
}

variable "ingress_cidr_blocks" {
  description = "Who may reach the internal origin ALB on 8001 (edges, shields); null means the whole VPC CIDR."
  type        = list(string)
  default     = null
}

variable "s3_bucket" {
  description = "Bucket the ingest nodes write to (TOWNSQUARE_S3_BUCKET); the tier reads immutable objects and stored playlists from it."
  type        = string
}

variable "s3_key_prefix" {
  description = "Key prefix inside the bucket (TOWNSQUARE_S3_PREFIX)."
  type        = string
  default     = ""
}

variable "s3_reader_policy_arn" {
  description = "IAM policy that lets the task read the bucket (the storage module's reader_policy_arn)."
  type        = string
}

variable "database_url_secret_arn" {
  description = "Secrets Manager secret (or SSM SecureString) whose value is TOWNSQUARE_DATABASE_URL, the rooms database the ingest nodes hold their leases in (the database module's database_url_secret_arn): the tier finds each room's owner there."
  type        = string
}

variable "secrets_kms_key_arn" {
  description = "KMS key that encrypts the database URL secret, when it is not the AWS-managed key; the execution role is allowed to decrypt with it."
  type        = string
  default     = null
}

variable "desired_count" {
  description = "Initial number of tasks; autoscaling moves it between min_count and max_count afterwards."
  type        = number
  default     = 2
}

variable "min_count" {
  description = "Fewest tasks autoscaling keeps (two or more spreads the tier over availability zones)."
  type        = number
  default     = 2

  validation {
    condition     = var.min_count >= 1
    error_message = "min_count must be at least 1."
  }
}

variable "max_count" {
  description = "Most tasks autoscaling starts."
  type        = number
  default     = 6
}

variable "cpu_target_percent" {
  description = "Average CPU the tier's autoscaling aims for."
  type        = number
  default     = 60
}

variable "owner_cache_seconds" {
  description = "How long a replica trusts a room's owner before asking the database again (TOWNSQUARE_TIER_OWNER_CACHE_SECONDS); null keeps the service's default (1 s)."
  type        = number
  default     = null
}

variable "failover_wait_seconds" {
  description = "How long a blocking request waits for a room's new owner before a 503 (TOWNSQUARE_TIER_FAILOVER_WAIT_SECONDS); null keeps the service's default (6 s)."
  type        = number
  default     = null
}

variable "max_connections" {
  description = "Connections to all owners at once per replica (TOWNSQUARE_TIER_MAX_CONNECTIONS); null keeps the service's default (256, about 40 three-rendition rooms)."
  type        = number
  default     = null
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the tier's logs."
  type        = number
  default     = 30
}

variable "log_kms_key_arn" {
  description = "KMS key for the CloudWatch log group; null uses CloudWatch's own encryption."
  type        = string
  default     = null
}

variable "access_logs_bucket" {
  description = "S3 bucket for ALB access logs; null leaves them off."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion (turn off before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
