variable "name" {
  description = "Name prefix for every resource of this edge tier (e.g. townsquare-edge, townsquare-shield)."
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
  description = "Fargate CPU units per edge task."
  type        = number
  default     = 1024
}

variable "memory" {
  description = "Fargate memory (MiB) per edge task."
  type        = number
  default     = 2048
}

variable "cache_bytes" {
  description = "LRU bound on cached bodies per task (TOWNSQUARE_EDGE_CACHE_BYTES); null uses half the task's memory."
  type        = number
  default     = null
}

variable "upstream_url" {
  description = "What this tier fetches from (TOWNSQUARE_EDGE_UPSTREAM): the origin's internal URL, or the shield tier's URL."
  type        = string
}

variable "internal" {
  description = "true: an internal tier (the shield) behind an internal ALB on plain HTTP 8080, reachable from the VPC only. false: the public edge fleet behind an HTTPS ALB."
  type        = bool
  default     = false
}

variable "vpc_id" {
  description = "VPC the tier lives in."
  type        = string
}

variable "lb_subnet_ids" {
  description = "Subnets for the load balancer: public subnets for the public fleet, private ones for a shield."
  type        = list(string)
}

variable "task_subnet_ids" {
  description = "Private subnets for the tasks (they need a NAT gateway or VPC endpoints to pull the image)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the public HTTPS listener; required when internal is false."
  type        = string
  default     = null
}

variable "ssl_policy" {
  description = "TLS policy of the public HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "ingress_cidr_blocks" {
  description = "Who may reach the load balancer; null means the world for the public fleet and the VPC CIDR for a shield."
  type        = list(string)
  default     = null
}

variable "restrict_to_cloudfront" {
  description = "Admit only CloudFront's origin-facing addresses (AWS managed prefix list) to the public load balancer: use when the cdn module fronts this fleet."
  type        = bool
  default     = false
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
}

variable "max_count" {
  description = "Most tasks autoscaling starts."
  type        = number
  default     = 10
}

variable "cpu_target_percent" {
  description = "Average CPU the tier's autoscaling aims for."
  type        = number
  default     = 60
}

variable "requests_per_target" {
  description = "Also scale on ALB requests per task per minute (ALBRequestCountPerTarget); null scales on CPU only. Every listener makes ~5 requests a second (parts and blocking playlist reloads)."
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
  description = "S3 bucket for ALB access logs; null leaves them off (they grow with every part fetched)."
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
