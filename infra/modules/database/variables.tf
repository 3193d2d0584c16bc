variable "name" {
  description = "Identifier of the DB instance and name prefix of its other resources (lowercase letters, digits and hyphens, starting with a letter)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,49}$", var.name)) && !can(regex("(--|-$)", var.name))
    error_message = "name must be 1-50 lowercase letters, digits or hyphens, start with a letter, and have no double or trailing hyphen."
  }
}

variable "vpc_id" {
  description = "VPC the database lives in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the DB subnet group, in at least two availability zones (Multi-AZ needs them)."
  type        = list(string)
}

variable "allowed_security_group_ids" {
  description = "Security groups allowed to connect on 5432, keyed by a name known before apply (e.g. { ingest = module.origin.security_group_id, tier = module.tier.security_group_id }): the ingest nodes and the origin tier. Nothing else is admitted."
  type        = map(string)
}

variable "engine_version" {
  description = "PostgreSQL version: a major (\"16\", RDS picks the newest minor and upgrades minors itself) or major.minor. 15 or later."
  type        = string
  default     = "16"

  validation {
    condition     = try(tonumber(split(".", var.engine_version)[0]) >= 15, false)
    error_message = "engine_version must be PostgreSQL 15 or later, e.g. \"16\" or \"16.4\"."
  }
}

variable "allow_major_version_upgrade" {
  description = "Allow a change of engine_version's major to upgrade the instance in place (the parameter group follows the major)."
  type        = bool
  default     = false
}

variable "instance_class" {
  description = "RDS instance class. The rooms registry is small and its load is lease renewals (one write per node every lease_seconds / 3), orphan scans (four cheap reads a second per node) and owner lookups (one read per room per second per tier replica)."
  type        = string
  default     = "db.t4g.medium"
}

variable "allocated_storage" {
  description = "Initial storage in GiB (gp3)."
  type        = number
  default     = 20
}

variable "max_allocated_storage" {
  description = "Upper bound in GiB for storage autoscaling; equal to allocated_storage turns it off."
  type        = number
  default     = 100
}

variable "multi_az" {
  description = "Keep a synchronous standby in a second zone; RDS fails over to it in one to two minutes. Ingest nodes that cannot renew their leases for two thirds of lease_seconds stop publishing, so a failover pauses rooms until the database answers again."
  type        = bool
  default     = true
}

variable "database_name" {
  description = "Name of the database created on the instance."
  type        = string
  default     = "townsquare"
}

variable "username" {
  description = "Master user name; its password is generated (random_password) and only ever written to the URL secret."
  type        = string
  default     = "townsquare"
}

variable "kms_key_arn" {
  description = "KMS key that encrypts the storage, snapshots and backups; null uses the AWS-managed aws/rds key. Storage is encrypted either way."
  type        = string
  default     = null
}

variable "secrets_kms_key_arn" {
  description = "KMS key that encrypts the database URL secret; null uses the AWS-managed aws/secretsmanager key. Readers of the secret need kms:Decrypt on it."
  type        = string
  default     = null
}

variable "secret_recovery_window_days" {
  description = "Days a deleted URL secret can be restored (0 deletes at once, 7-30 otherwise)."
  type        = number
  default     = 7
}

variable "deletion_protection" {
  description = "Refuse to delete the instance (turn off and apply before `terraform destroy`)."
  type        = bool
  default     = true
}

variable "skip_final_snapshot" {
  description = "Delete without a final snapshot (only for throwaway stacks)."
  type        = bool
  default     = false
}

variable "backup_retention_days" {
  description = "Days of automated backups and point-in-time recovery (1-35)."
  type        = number
  default     = 7

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35."
  }
}

variable "backup_window" {
  description = "Daily backup window in UTC (hh24:mi-hh24:mi), outside maintenance_window; null lets RDS pick one."
  type        = string
  default     = null
}

variable "maintenance_window" {
  description = "Weekly maintenance window in UTC (ddd:hh24:mi-ddd:hh24:mi), for minor upgrades; null lets RDS pick one. Pick a time without shows: a Multi-AZ instance fails over during it."
  type        = string
  default     = null
}

variable "apply_immediately" {
  description = "Apply instance changes now instead of in the next maintenance window."
  type        = bool
  default     = false
}

variable "performance_insights_enabled" {
  description = "Turn on Performance Insights (free tier: 7 days of retention)."
  type        = bool
  default     = true
}

variable "performance_insights_retention_days" {
  description = "Days Performance Insights keeps its data (7, or a multiple of 31 up to 731)."
  type        = number
  default     = 7
}

variable "performance_insights_kms_key_arn" {
  description = "KMS key for Performance Insights data; null uses the AWS-managed key."
  type        = string
  default     = null
}

variable "monitoring_interval" {
  description = "Seconds between Enhanced Monitoring samples (0 turns it off; 1, 5, 10, 15, 30 or 60). The module creates the monitoring role."
  type        = number
  default     = 60

  validation {
    condition     = contains([0, 1, 5, 10, 15, 30, 60], var.monitoring_interval)
    error_message = "monitoring_interval must be one of 0, 1, 5, 10, 15, 30, 60."
  }
}

variable "log_min_duration_ms" {
  description = "Statements slower than this many milliseconds are logged (log_min_duration_statement); DDL is always logged."
  type        = number
  default     = 500
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the PostgreSQL and upgrade logs the instance exports."
  type        = number
  default     = 30
}

variable "log_kms_key_arn" {
  description = "KMS key for those CloudWatch log groups; null uses CloudWatch's own encryption."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
