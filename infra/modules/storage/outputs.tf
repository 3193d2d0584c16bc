output "bucket_id" {
  description = "Name of the bucket (TOWNSQUARE_S3_BUCKET)."
  value       = aws_s3_bucket.this.id
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "bucket_region" {
  description = "Region of the bucket (TOWNSQUARE_S3_REGION)."
  value       = aws_s3_bucket.this.region
}

output "bucket_key_prefix" {
  description = "Key prefix the services use (TOWNSQUARE_S3_PREFIX)."
  value       = var.key_prefix
}

output "writer_policy_arn" {
  description = "IAM policy for the ingest nodes (packager and origin): read, write and delete under the prefix."
  value       = aws_iam_policy.writer.arn
}

output "reader_policy_arn" {
  description = "IAM policy for read-only consumers (the origin tier, a standalone origin, recovery tooling)."
  value       = aws_iam_policy.reader.arn
}
