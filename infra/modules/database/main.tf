# The rooms registry of an ingest cluster: PostgreSQL on RDS. Rooms, stream-key hashes,
# epochs, each room's next media sequence number, the node directory and the room leases
# live here (TOWNSQUARE_DATABASE_URL); the ingest nodes and the origin tier read it.
#
# The master password is generated here and written once, inside the full connection
# URL, to a Secrets Manager secret the ECS tasks receive as TOWNSQUARE_DATABASE_URL. It is
# also in the Terraform state (random_password): keep the state encrypted and private.

locals {
  port          = 5432
  engine_major  = split(".", var.engine_version)[0]
  log_exports   = ["postgresql", "upgrade"]
  database_url  = "postgresql://${var.username}:${random_password.master.result}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/${var.database_name}"
  monitoring_on = var.monitoring_interval > 0
}

################################################################################
# Credentials
################################################################################

# Letters and digits only: the password goes into a URL unescaped.
resource "random_password" "master" {
  length  = 40
  special = false
}

resource "aws_secretsmanager_secret" "url" {
  #checkov:skip=CKV_AWS_149:A customer-managed key is optional (var.secrets_kms_key_arn); Secrets Manager encrypts with aws/secretsmanager otherwise.
  #checkov:skip=CKV2_AWS_57:The value is a URL built from the instance endpoint and the master password; rotating it means a new password and a rolling restart of the tasks, done by hand (infra/README.md), not by a rotation Lambda.
  name_prefix             = "${var.name}/database-url-"
  description             = "TOWNSQUARE_DATABASE_URL of ${var.name}: postgresql://user:password@host:5432/database"
  kms_key_id              = var.secrets_kms_key_arn
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "url" {
  secret_id     = aws_secretsmanager_secret.url.id
  secret_string = local.database_url
}

################################################################################
# Network
################################################################################

resource "aws_db_subnet_group" "this" {
  name_prefix = "${var.name}-"
  description = "Private subnets of ${var.name}"
  subnet_ids  = var.subnet_ids
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

# No egress rules: Terraform removes the default allow-all rule, and the database opens no
# connections of its own.
resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "townsquare rooms database: PostgreSQL from the ingest nodes and the origin tier only"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "clients" {
  for_each                     = var.allowed_security_group_ids
  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = local.port
  to_port                      = local.port
  referenced_security_group_id = each.value
}

################################################################################
# Parameters, logs, monitoring
################################################################################

resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.name}-pg${local.engine_major}-"
  family      = "postgres${local.engine_major}"
  description = "townsquare rooms database: TLS required, slow statements and DDL logged"
  tags        = var.tags

  # Connections without TLS are refused. asyncpg (the service's driver) negotiates TLS by
  # default (sslmode prefer), so the plain postgresql:// URL connects encrypted.
  parameter {
    name         = "rds.force_ssl"
    value        = "1"
    apply_method = "pending-reboot"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = tostring(var.log_min_duration_ms)
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Created before the instance, so RDS does not create them without a retention.
resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:Database logs of a small registry; retention is var.log_retention_days (30 by default) to bound cost.
  #checkov:skip=CKV_AWS_158:KMS for logs is optional (var.log_kms_key_arn); CloudWatch encrypts at rest by default.
  for_each          = toset(local.log_exports)
  name              = "/aws/rds/instance/${var.name}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  count              = local.monitoring_on ? 1 : 0
  name_prefix        = "${var.name}-monitoring-"
  description        = "RDS Enhanced Monitoring of ${var.name}"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  count      = local.monitoring_on ? 1 : 0
  role       = aws_iam_role.monitoring[0].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

################################################################################
# Instance
################################################################################

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_161:The services connect with the password in TOWNSQUARE_DATABASE_URL; IAM tokens expire every 15 minutes and the registry's connection pool has no hook to renew them.
  #checkov:skip=CKV_AWS_354:A customer-managed key for Performance Insights is optional (var.performance_insights_kms_key_arn); the AWS-managed key encrypts it otherwise.
  identifier     = var.name
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = var.instance_class
  port           = local.port

  db_name  = var.database_name
  username = var.username
  password = random_password.master.result

  allocated_storage     = var.allocated_storage
  max_allocated_storage = var.max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  multi_az               = var.multi_az
  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.this.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period   = var.backup_retention_days
  backup_window             = var.backup_window
  maintenance_window        = var.maintenance_window
  copy_tags_to_snapshot     = true
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = var.skip_final_snapshot
  final_snapshot_identifier = var.skip_final_snapshot ? null : "${var.name}-final"

  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = var.allow_major_version_upgrade
  apply_immediately           = var.apply_immediately

  enabled_cloudwatch_logs_exports       = local.log_exports
  performance_insights_enabled          = var.performance_insights_enabled
  performance_insights_retention_period = var.performance_insights_enabled ? var.performance_insights_retention_days : null
  performance_insights_kms_key_id       = var.performance_insights_enabled ? var.performance_insights_kms_key_arn : null
  monitoring_interval                   = var.monitoring_interval
  monitoring_role_arn                   = local.monitoring_on ? aws_iam_role.monitoring[0].arn : null
  iam_database_authentication_enabled   = false

  tags = merge(var.tags, { Name = var.name })

  depends_on = [
    aws_cloudwatch_log_group.this,
    aws_iam_role_policy_attachment.monitoring,
  ]
}
