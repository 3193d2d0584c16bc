variable "bucket_name" {
  description = "Name of the S3 bucket that holds live parts, playlists and recordings."
  type        = string
}

variable "key_prefix" {
  description = "Key prefix the services write under (passed to them as TOWNSQUARE_S3_PREFIX). Empty, or ending in '/'."
  type        = string
  default     = ""

  validation {
    condition     = var.key_prefix == "" || endswith(var.key_prefix, "/")
    error_message = "key_prefix must be empty or end with '/'."
  }
}

variable "live_expiration_days" {
  description = "Days after which live-window objects expire. A live window is ~30 s, so a day is ample for late readers and debugging."
  type        = number
  default     = 1

  validation {
    condition     = var.live_expiration_days >= 1
    error_message = "S3 lifecycle expiration is counted in whole days, at least 1."
  }
}

variable "recordings_transition_days" {
  description = "Days after which recordings move to recordings_storage_class; null keeps them in STANDARD."
  type        = number
  default     = 30
}

variable "recordings_storage_class" {
  description = "Cheaper storage class recordings move to after recordings_transition_days (e.g. STANDARD_IA, GLACIER_IR)."
  type        = string
  default     = "STANDARD_IA"
}

variable "recordings_expiration_days" {
  description = "Days after which recordings are deleted; null keeps them forever."
  type        = number
  default     = null
}

variable "versioning_enabled" {
  description = "Turn on bucket versioning. Off by default: live playlists are rewritten several times a second and every version would be billed."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS; null uses SSE-S3 (AES256), which costs nothing per request."
  type        = string
  default     = null
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete a bucket that still holds objects (recordings included)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
