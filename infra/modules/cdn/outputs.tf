output "distribution_id" {
  description = "ID of the distribution (for invalidations and CloudWatch dimensions)."
  value       = aws_cloudfront_distribution.this.id
}

output "distribution_arn" {
  description = "ARN of the distribution."
  value       = aws_cloudfront_distribution.this.arn
}

output "distribution_domain_name" {
  description = "The *.cloudfront.net name of the distribution."
  value       = aws_cloudfront_distribution.this.domain_name
}

output "distribution_hosted_zone_id" {
  description = "Route 53 zone ID of the distribution, for alias records."
  value       = aws_cloudfront_distribution.this.hosted_zone_id
}

output "url" {
  description = "Base URL listeners use."
  value       = "https://${length(var.aliases) > 0 ? var.aliases[0] : aws_cloudfront_distribution.this.domain_name}"
}

output "playlist_cache_policy_id" {
  description = "ID of the playlist cache policy (keyed on _HLS_msn, _HLS_part, _HLS_skip)."
  value       = aws_cloudfront_cache_policy.playlists.id
}
