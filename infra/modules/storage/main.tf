locals {
  objects_arn = "${aws_s3_bucket.this.arn}/${var.key_prefix}*"
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Server access logs would log every ~200 ms part write and edge fetch; CloudWatch request metrics are enabled instead.
  #checkov:skip=CKV_AWS_144:Live audio is ephemeral and recordings can be re-derived per region; cross-region replication is the operator's call.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; the origin is fed in-process by the packager.
  #checkov:skip=CKV_AWS_21:Versioning is a variable (versioning_enabled), off by default because live playlists are rewritten several times a second.
  #checkov:skip=CKV_AWS_145:SSE-S3 by default: a part is written every ~200 ms per rendition and the audio is public once live; set kms_key_arn for SSE-KMS.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # One KMS call per bucket key instead of per object when SSE-KMS is on.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = var.versioning_enabled ? "Enabled" : "Suspended"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # Whole bucket: a multipart upload cut off by a task restart is never billed for long.
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    id     = "live-window"
    status = "Enabled"

    # The packager tags what only matters while a broadcast is live (parts, live
    # playlists, state files) townsquare-retention=live; segments, init segments and
    # recording playlists carry townsquare-retention=recording.
    filter {
      and {
        prefix = var.key_prefix
        tags   = { "townsquare-retention" = "live" }
      }
    }

    expiration {
      days = var.live_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  rule {
    id     = "recordings"
    status = "Enabled"

    filter {
      and {
        prefix = var.key_prefix
        tags   = { "townsquare-retention" = "recording" }
      }
    }

    dynamic "transition" {
      for_each = var.recordings_transition_days == null ? [] : [var.recordings_transition_days]
      content {
        days          = transition.value
        storage_class = var.recordings_storage_class
      }
    }

    dynamic "expiration" {
      for_each = var.recordings_expiration_days == null ? [] : [var.recordings_expiration_days]
      content {
        days = expiration.value
      }
    }

    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_metric" "this" {
  bucket = aws_s3_bucket.this.id
  name   = "EntireBucket"
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

# The writers are the ingest nodes (packager + origin in one process): they write parts,
# segments, playlists and recordings, and delete parts that fall out of the window.
data "aws_iam_policy_document" "writer" {
  statement {
    sid       = "ListOwnPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.key_prefix}*"]
    }
  }

  statement {
    sid = "ReadWriteObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:PutObjectTagging",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "UseBucketKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

# Readers: the origin tier (`townsquare tier`), a standalone origin (`townsquare origin`) and
# any recovery or replay tooling.
# Edges never read the bucket; they fetch from the origin or the shield over HTTP.
data "aws_iam_policy_document" "reader" {
  statement {
    sid       = "ListOwnPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.key_prefix}*"]
    }
  }

  statement {
    sid       = "ReadObjects"
    actions   = ["s3:GetObject"]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptWithBucketKey"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "writer" {
  name_prefix = "${var.bucket_name}-writer-"
  description = "townsquare: read/write/delete objects under the service prefix of ${var.bucket_name}."
  policy      = data.aws_iam_policy_document.writer.json
  tags        = var.tags
}

resource "aws_iam_policy" "reader" {
  name_prefix = "${var.bucket_name}-reader-"
  description = "townsquare: read objects under the service prefix of ${var.bucket_name}."
  policy      = data.aws_iam_policy_document.reader.json
  tags        = var.tags
}
