output "control_lb_dns_name" {
  description = "DNS name of the control API ALB (point control.<domain> here)."
  value       = aws_lb.control.dns_name
}

output "control_lb_zone_id" {
  description = "Route 53 zone ID of the control API ALB, for alias records."
  value       = aws_lb.control.zone_id
}

output "control_lb_arn" {
  description = "ARN of the control API ALB (attach a WAF here)."
  value       = aws_lb.control.arn
}

output "rtmp_lb_dns_name" {
  description = "DNS name of the RTMP NLB (point rtmp.<domain> here)."
  value       = aws_lb.rtmp.dns_name
}

output "rtmp_lb_zone_id" {
  description = "Route 53 zone ID of the RTMP NLB, for alias records."
  value       = aws_lb.rtmp.zone_id
}

output "control_url" {
  description = "Base URL of the control API as handed out to broadcasters."
  value       = local.container_environment.TOWNSQUARE_PUBLIC_CONTROL_URL
}

output "rtmp_url" {
  description = "RTMP URL template for broadcasters ({stream_key} is per room)."
  value       = "${local.container_environment.TOWNSQUARE_PUBLIC_RTMP_URL}/live/{stream_key}"
}

output "whip_url" {
  description = "WHIP URL template for browsers and WHIP clients ({room} is the room name)."
  value       = "${local.container_environment.TOWNSQUARE_PUBLIC_CONTROL_URL}/whip/{room}"
}

output "admin_token_parameter_arn" {
  description = "ARN of the SSM parameter (or secret) holding TOWNSQUARE_ADMIN_TOKEN."
  value       = local.admin_token_arn
}

output "security_group_id" {
  description = "Security group of the ingest nodes: admit it to the rooms database."
  value       = aws_security_group.task.id
}

output "nodes_dns_name" {
  description = "Private DNS name that resolves to every running node's IP (Cloud Map, inside the VPC): control API on 8000, origin on 8001, /metrics on both."
  value       = "${aws_service_discovery_service.this.name}.${aws_service_discovery_private_dns_namespace.this.name}"
}

output "service_discovery_namespace_id" {
  description = "Cloud Map private DNS namespace the nodes are registered in (register other services in it too)."
  value       = aws_service_discovery_private_dns_namespace.this.id
}

output "service_name" {
  description = "Name of the ECS service of the ingest nodes (for `aws ecs update-service`)."
  value       = aws_ecs_service.this.name
}

output "task_role_arn" {
  description = "IAM role of the ingest processes (has the bucket writer policy)."
  value       = aws_iam_role.task.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the service."
  value       = aws_cloudwatch_log_group.this.name
}
