output "url" {
  description = "Base URL of this tier: https://<lb> for the public fleet, http://<lb>:8080 for a shield (use it as the next tier's upstream_url)."
  value       = var.internal ? "http://${aws_lb.this.dns_name}:${local.edge_port}" : "https://${aws_lb.this.dns_name}"
}

output "lb_dns_name" {
  description = "DNS name of the tier's load balancer."
  value       = aws_lb.this.dns_name
}

output "lb_zone_id" {
  description = "Route 53 zone ID of the load balancer, for alias records."
  value       = aws_lb.this.zone_id
}

output "lb_arn" {
  description = "ARN of the load balancer (attach a WAF here)."
  value       = aws_lb.this.arn
}

output "lb_arn_suffix" {
  description = "ARN suffix of the load balancer, for CloudWatch dimensions."
  value       = aws_lb.this.arn_suffix
}

output "security_group_id" {
  description = "Security group of the tier's tasks."
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
