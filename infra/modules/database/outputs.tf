output "database_url_secret_arn" {
  description = "ARN of the Secrets Manager secret whose value is the full postgresql://user:password@host:5432/database URL: pass it to the origin (ingest) and tier modules' database_url_secret_arn, which hand it to the tasks as TOWNSQUARE_DATABASE_URL. Known once the secret has a value, so services that use it start after the database exists."
  value       = aws_secretsmanager_secret_version.url.arn
}

output "address" {
  description = "Host name of the instance (the primary; it moves to the standby on a Multi-AZ failover)."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "PostgreSQL port."
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Name of the database the services use."
  value       = var.database_name
}

output "instance_id" {
  description = "RDS instance identifier (for `aws rds` commands and CloudWatch dimensions)."
  value       = aws_db_instance.this.identifier
}

output "instance_arn" {
  description = "ARN of the RDS instance."
  value       = aws_db_instance.this.arn
}

output "security_group_id" {
  description = "Security group of the instance."
  value       = aws_security_group.this.id
}
