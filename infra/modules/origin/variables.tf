variable "name" {
  description = "Name prefix for every resource of the origin/ingest service."
  type        = string
}

variable "cluster_arn" {
  description = "ARN of the ECS cluster the service runs in."
  type        = string
}

variable "image" {
  description = "Container image of townsquare (the one image for every service), e.g. an ECR URI with a tag."
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
  description = "Fargate CPU units for the task. Encoding runs in this task: one vCPU encodes the default ladder for several rooms."
  type        = number
  default     = 2048
}

variable "memory" {
  description = "Fargate memory (MiB) for the task."
  type        = number
  default     = 4096
}

variable "vpc_id" {
  description = "VPC the service and its load balancers live in."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets for the internet-facing control ALB and RTMP NLB (and the task itself when assign_public_ip is true)."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets for the internal origin ALB (and the task when assign_public_ip is false)."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Run the task in a public subnet with a public IP. WHIP media is WebRTC over UDP straight to the task (no load balancer can carry ICE), so browsers can publish only when this is true."
  type        = bool
  default     = true
}

variable "whip_udp_port_range" {
  description = "UDP ports opened to the world for WebRTC (WHIP) media when assign_public_ip is true. Defaults to Linux's ephemeral range, which is where aiortc binds."
  type        = object({ from = number, to = number })
  default     = { from = 32768, to = 60999 }
}

variable "whip_ice_servers" {
  description = "STUN/TURN URLs for WHIP's ICE agent, comma separated (TOWNSQUARE_WHIP_ICE_SERVERS). The task sees only its private address, so without a STUN server browsers get no reachable candidate."
  type        = string
  default     = "stun:stun.l.google.com:19302"
}

variable "certificate_arn" {
  description = "ACM certificate (same region) for the control API's HTTPS listener (WHIP, rooms API, broadcaster page)."
  type        = string
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "control_ingress_cidr_blocks" {
  description = "Who may reach the control API (443). Broadcasters' browsers need it; narrow it if only known networks publish."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "rtmp_ingress_cidr_blocks" {
  description = "Who may push RTMP to the NLB on 1935."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "origin_ingress_cidr_blocks" {
  description = "Who may reach the internal origin ALB on 8001 (edges, shields); null means the whole VPC CIDR."
  type        = list(string)
  default     = null
}

variable "s3_bucket" {
  description = "Bucket the packager writes to (TOWNSQUARE_S3_BUCKET)."
  type        = string
}

variable "s3_key_prefix" {
  description = "Key prefix inside the bucket (TOWNSQUARE_S3_PREFIX)."
  type        = string
  default     = ""
}

variable "s3_writer_policy_arn" {
  description = "IAM policy that lets the task write the bucket (the storage module's writer_policy_arn)."
  type        = string
}

variable "admin_token_parameter_arn" {
  description = "ARN of an existing SSM SecureString (or Secrets Manager secret) holding the admin token; null creates an SSM parameter with a random token."
  type        = string
  default     = null
}

variable "database_url_secret_arn" {
  description = "Secrets Manager secret (or SSM SecureString) whose value is TOWNSQUARE_DATABASE_URL, e.g. postgresql://user:pass@host/db. Without it the rooms registry is SQLite on the task's ephemeral disk, and a task replacement forgets rooms and stream keys."
  type        = string
  default     = null
}

variable "secrets_kms_key_arn" {
  description = "KMS key that encrypts the admin token, when it is not the AWS-managed aws/ssm key; the execution role is allowed to decrypt with it."
  type        = string
  default     = null
}

variable "public_control_url" {
  description = "Base URL handed out for the control API and WHIP (TOWNSQUARE_PUBLIC_CONTROL_URL), e.g. https://control.example.com; null uses the ALB's DNS name."
  type        = string
  default     = null
}

variable "public_rtmp_url" {
  description = "Base RTMP URL handed out to broadcasters (TOWNSQUARE_PUBLIC_RTMP_URL), e.g. rtmp://rtmp.example.com:1935; null uses the NLB's DNS name."
  type        = string
  default     = null
}

variable "public_edge_url" {
  description = "Base URL listeners use (TOWNSQUARE_PUBLIC_EDGE_URL): the CDN or the edge ALB, e.g. https://listen.example.com."
  type        = string
}

variable "ladder" {
  description = "Rendition ladder (TOWNSQUARE_LADDER, name:codec:kbps:channels, comma separated); null keeps the service's default."
  type        = string
  default     = null
}

variable "idle_timeout_seconds" {
  description = "A room with no speaker for this long ends by itself (TOWNSQUARE_IDLE_TIMEOUT_SECONDS); null keeps the service's default."
  type        = number
  default     = null
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the service's logs."
  type        = number
  default     = 30
}

variable "log_kms_key_arn" {
  description = "KMS key for the CloudWatch log group; null uses CloudWatch's own encryption."
  type        = string
  default     = null
}

variable "access_logs_bucket" {
  description = "S3 bucket for ALB/NLB access logs; null leaves them off."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protect the load balancers from deletion (turn off before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
