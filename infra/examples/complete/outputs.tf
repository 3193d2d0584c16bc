output "rtmp_url" {
  description = "RTMP URL for OBS/ffmpeg; {stream_key} is the key returned when a room is created."
  value       = "rtmp://${local.rtmp_host}:1935/live/{stream_key}"
}

output "whip_url" {
  description = "WHIP URL for browsers and WHIP clients; {room} is the room name."
  value       = "https://${local.control_host}/whip/{room}"
}

output "listener_url" {
  description = "Page listeners open; {room} is the room name."
  value       = "https://${local.listen_host}/listen/{room}"
}

output "playlist_url" {
  description = "Multivariant playlist for any HLS player; {room} is the room name."
  value       = "https://${local.listen_host}/live/{room}/master.m3u8"
}

output "control_url" {
  description = "Rooms API (OpenAPI at /docs); needs the admin token."
  value       = "https://${local.control_host}"
}

output "admin_token_parameter_arn" {
  description = "SSM parameter holding the admin token (`aws ssm get-parameter --with-decryption`)."
  value       = module.origin.admin_token_parameter_arn
}

output "bucket_name" {
  description = "Bucket holding live windows and recordings."
  value       = module.storage.bucket_id
}

output "ingest_service_name" {
  description = "ECS service of the ingest nodes."
  value       = module.origin.service_name
}

output "tier_service_name" {
  description = "ECS service of the origin tier."
  value       = module.tier.service_name
}

output "ingest_nodes_dns_name" {
  description = "Private DNS name resolving to every running ingest node (inside the VPC)."
  value       = module.origin.nodes_dns_name
}

output "database_url_secret_arn" {
  description = "Secrets Manager secret holding TOWNSQUARE_DATABASE_URL (the rooms database)."
  value       = module.database.database_url_secret_arn
}

output "edge_service_name" {
  description = "ECS service of the edge fleet."
  value       = module.edge.service_name
}

output "cluster_name" {
  description = "ECS cluster running every service."
  value       = aws_ecs_cluster.this.name
}

output "cdn_distribution_id" {
  description = "CloudFront distribution ID, or null without the CDN."
  value       = var.enable_cdn ? module.cdn[0].distribution_id : null
}
