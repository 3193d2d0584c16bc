variable "name" {
  description = "Name prefix for the distribution and its policies."
  type        = string
}

variable "origin_domain_name" {
  description = "DNS name of the public edge fleet, matching its ALB certificate (e.g. edge-origin.example.com); CloudFront connects over HTTPS only."
  type        = string
}

variable "aliases" {
  description = "Listener-facing names of the distribution (e.g. [\"listen.example.com\"]); empty uses the *.cloudfront.net name."
  type        = list(string)
  default     = []
}

variable "acm_certificate_arn" {
  description = "ACM certificate in us-east-1 covering aliases; null uses CloudFront's default certificate (only with no aliases)."
  type        = string
  default     = null
}

variable "target_duration_seconds" {
  description = "EXT-X-TARGETDURATION the packager advertises; sets the blocking-playlist lifetime (6 × TD, LL-HLS Appendix B) and the floor of the origin timeout."
  type        = number
  default     = 2
}

variable "origin_read_timeout_seconds" {
  description = "How long CloudFront waits for the edge fleet; must exceed 3 × target duration because blocking playlist requests are held that long."
  type        = number
  default     = 15

  validation {
    condition     = var.origin_read_timeout_seconds >= 1 && var.origin_read_timeout_seconds <= 60
    error_message = "CloudFront allows origin read timeouts of 1 to 60 seconds (more needs a quota increase)."
  }
}

variable "media_ttl_seconds" {
  description = "Default lifetime of parts, segments and init sections when the origin sends no Cache-Control (they never change once written)."
  type        = number
  default     = 86400
}

variable "price_class" {
  description = "CloudFront price class (PriceClass_100, PriceClass_200, PriceClass_All)."
  type        = string
  default     = "PriceClass_100"
}

variable "origin_shield_region" {
  description = "Region of CloudFront Origin Shield (collapses requests from all edge locations); null leaves it off, the shield tier of the edge module does that job inside the VPC."
  type        = string
  default     = null
}

variable "web_acl_id" {
  description = "ARN of a WAFv2 web ACL (scope CLOUDFRONT) to attach; null attaches none."
  type        = string
  default     = null
}

variable "logging_bucket_domain_name" {
  description = "Bucket (its bucket_domain_name, ACLs enabled) for standard access logs; null leaves logging off."
  type        = string
  default     = null
}

variable "cors_allowed_origins" {
  description = "Origins allowed to fetch playlists and parts from a page elsewhere (embedded players)."
  type        = list(string)
  default     = ["*"]
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
