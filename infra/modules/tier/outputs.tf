output "origin_internal_url" {
  description = "URL the shield (or the edges) use as their upstream: the internal origin ALB in front of the tier."
  value       = "http://${aws_lb.this.dns_name}:${local.origin_port}"
}

output "lb_dns_name" {
  description = "DNS name of the internal origin ALB."
  value       = aws_lb.this.dns_name
}

output "lb_arn_suffix" {
  description = "ARN suffix of the internal origin ALB, for CloudWatch dimensions."
  value       = aws_lb.this.arn_suffix
}

output "security_group_id" {
  description = "Security group of the tier's tasks: admit it to the ingest nodes' origin port (origin module's origin_client_security_group_ids) and to the database."
  value       = aws_security_group.task.id
}

output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "log_group_name" {
  description = "CloudWatch log group of the tier."
  value       = aws_cloudwatch_log_group.this.name
}
