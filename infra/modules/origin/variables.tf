variable "name" {
  description = "Name prefix for every resource of the ingest service."
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

variable "ingest_count" {
  description = "Number of ingest nodes (tasks). Rooms are spread over them, each published by one node at a time; with two or more, a node that stops or dies loses no room for longer than a lease."
  type        = number
  default     = 2

  validation {
    condition     = var.ingest_count >= 1 && floor(var.ingest_count) == var.ingest_count
    error_message = "ingest_count must be a whole number, at least 1."
  }
}

variable "cpu" {
  description = "Fargate CPU units per node. Encoding runs here: one vCPU encodes the default ladder for several rooms."
  type        = number
  default     = 2048
}

variable "memory" {
  description = "Fargate memory (MiB) per node."
  type        = number
  default     = 4096
}

variable "node_capacity" {
  description = "Rooms one node publishes at most (TOWNSQUARE_NODE_CAPACITY); past it the node adopts none and refuses new ones. null keeps the service's default (200): size it to what cpu can encode."
  type        = number
  default     = null

  validation {
    condition     = var.node_capacity == null ? true : var.node_capacity >= 1
    error_message = "node_capacity must be at least 1."
  }
}

variable "lease_seconds" {
  description = "Lifetime of a room's lease (TOWNSQUARE_LEASE_SECONDS), renewed every third of it: a dead node's rooms are adopted by another node within about this long. null keeps the service's default (6 s); the nodes' clocks must agree to well within it."
  type        = number
  default     = null

  validation {
    condition     = var.lease_seconds == null ? true : var.lease_seconds >= 1.5
    error_message = "lease_seconds must be at least 1.5."
  }
}

variable "stop_timeout_seconds" {
  description = "Seconds between SIGTERM and SIGKILL (the container's stopTimeout, at most 120 on Fargate). A stopping node hands its rooms over: stops them, waits for the store and the database (up to store_drain_seconds, 10 s, each), then releases the leases."
  type        = number
  default     = 60

  validation {
    condition     = var.stop_timeout_seconds >= 30 && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must be between 30 (the hand-over needs it) and 120 (Fargate's maximum)."
  }
}

variable "vpc_id" {
  description = "VPC the service and its load balancers live in."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets for the internet-facing control ALB and RTMP NLB (and the nodes when assign_public_ip is true)."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets for the nodes when assign_public_ip is false."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Run the nodes in public subnets with public IPs. WHIP media is WebRTC over UDP straight to a node (no load balancer can carry ICE), so browsers can publish only when this is true."
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

variable "origin_client_security_group_ids" {
  description = "Security groups allowed to reach the nodes' origins on 8001, keyed by a name known before apply: the origin tier's tasks (e.g. { tier = module.tier.security_group_id }). The nodes also admit each other."
  type        = map(string)
  default     = {}
}

variable "service_discovery_namespace_name" {
  description = "Name of the Cloud Map private DNS namespace the module creates in the VPC for the nodes; null means <name>.internal."
  type        = string
  default     = null
}

variable "service_discovery_name" {
  description = "Cloud Map service name of the nodes: <service_discovery_name>.<namespace> resolves to every running node's private IP."
  type        = string
  default     = "nodes"
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
  description = "Secrets Manager secret (or SSM SecureString) whose value is TOWNSQUARE_DATABASE_URL, postgresql://user:pass@host:5432/db (the database module's database_url_secret_arn). The nodes share rooms, stream-key hashes, epochs and leases through it."
  type        = string
}

variable "secrets_kms_key_arn" {
  description = "KMS key that encrypts the admin token (and the database URL secret, if the same key does), when it is not the AWS-managed key; the execution role is allowed to decrypt with it."
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
