# CloudFront in front of the public edge fleet. Lifetimes follow LL-HLS Appendix B: the
# edges send Cache-Control (blocking playlist responses ~6 × target duration, plain
# playlists ~1 s, parts and segments long) and the policies below only bound them and
# key the cache on the three delivery directives, so random query strings can't bust it.

locals {
  origin_id             = "edges"
  hls_query_strings     = ["_HLS_msn", "_HLS_part", "_HLS_skip"]
  blocking_playlist_ttl = 6 * var.target_duration_seconds
}

resource "aws_cloudfront_cache_policy" "playlists" {
  name        = "${var.name}-playlists"
  comment     = "LL-HLS playlists keyed on _HLS_msn, _HLS_part, _HLS_skip only"
  min_ttl     = 0
  default_ttl = 1
  max_ttl     = local.blocking_playlist_ttl

  parameters_in_cache_key_and_forwarded_to_origin {
    enable_accept_encoding_gzip   = true
    enable_accept_encoding_brotli = true

    cookies_config {
      cookie_behavior = "none"
    }

    headers_config {
      header_behavior = "none"
    }

    query_strings_config {
      query_string_behavior = "whitelist"

      query_strings {
        items = local.hls_query_strings
      }
    }
  }
}

resource "aws_cloudfront_cache_policy" "media" {
  name        = "${var.name}-media"
  comment     = "CMAF parts, segments and init sections: immutable once written"
  min_ttl     = 0
  default_ttl = var.media_ttl_seconds
  max_ttl     = 31536000

  parameters_in_cache_key_and_forwarded_to_origin {
    enable_accept_encoding_gzip   = false
    enable_accept_encoding_brotli = false

    cookies_config {
      cookie_behavior = "none"
    }

    headers_config {
      header_behavior = "none"
    }

    query_strings_config {
      query_string_behavior = "none"
    }
  }
}

resource "aws_cloudfront_cache_policy" "pages" {
  name        = "${var.name}-pages"
  comment     = "Listener pages and static assets"
  min_ttl     = 0
  default_ttl = 60
  max_ttl     = 3600

  parameters_in_cache_key_and_forwarded_to_origin {
    enable_accept_encoding_gzip   = true
    enable_accept_encoding_brotli = true

    cookies_config {
      cookie_behavior = "none"
    }

    headers_config {
      header_behavior = "none"
    }

    query_strings_config {
      query_string_behavior = "none"
    }
  }
}

resource "aws_cloudfront_response_headers_policy" "this" {
  name    = "${var.name}-headers"
  comment = "CORS for embedded players, and security headers"

  cors_config {
    access_control_allow_credentials = false
    access_control_max_age_sec       = 600
    origin_override                  = true

    access_control_allow_headers {
      items = ["*"]
    }

    access_control_allow_methods {
      items = ["GET", "HEAD", "OPTIONS"]
    }

    access_control_allow_origins {
      items = var.cors_allowed_origins
    }
  }

  security_headers_config {
    content_type_options {
      override = true
    }

    strict_transport_security {
      access_control_max_age_sec = 31536000
      # Scoped to the listener host (e.g. listen.example.com) and the names below it.
      include_subdomains = true
      preload            = true
      override           = true
    }

    referrer_policy {
      referrer_policy = "strict-origin-when-cross-origin"
      override        = true
    }
  }
}

resource "aws_cloudfront_distribution" "this" {
  #checkov:skip=CKV_AWS_310:One origin by design: the edge fleet is itself load-balanced across zones; a failover group would need a second fleet.
  #checkov:skip=CKV_AWS_305:No default root object: the root path is not a page; listeners open /listen/{room}.
  #checkov:skip=CKV_AWS_374:Rooms are public; geo restriction is the operator's call.
  #checkov:skip=CKV_AWS_68:A WAF is optional (var.web_acl_id); it bills per request and every listener makes ~5 a second.
  #checkov:skip=CKV2_AWS_47:A WAF is optional (var.web_acl_id); see CKV_AWS_68.
  #checkov:skip=CKV_AWS_86:Access logs are optional (var.logging_bucket_domain_name); they grow with every part fetched.
  #checkov:skip=CKV2_AWS_42:A custom certificate is used when var.acm_certificate_arn is set (the example sets it).
  #checkov:skip=CKV_AWS_174:TLSv1.2_2021 is set whenever a custom certificate is; the default *.cloudfront.net certificate cannot choose.
  enabled         = true
  is_ipv6_enabled = true
  comment         = "townsquare listeners (${var.name})"
  http_version    = "http2and3"
  price_class     = var.price_class
  aliases         = var.aliases
  web_acl_id      = var.web_acl_id
  tags            = var.tags

  origin {
    domain_name = var.origin_domain_name
    origin_id   = local.origin_id

    custom_origin_config {
      http_port                = 80
      https_port               = 443
      origin_protocol_policy   = "https-only"
      origin_ssl_protocols     = ["TLSv1.2"]
      origin_read_timeout      = var.origin_read_timeout_seconds
      origin_keepalive_timeout = 60
    }

    dynamic "origin_shield" {
      for_each = var.origin_shield_region == null ? [] : [var.origin_shield_region]
      content {
        enabled              = true
        origin_shield_region = origin_shield.value
      }
    }
  }

  ordered_cache_behavior {
    path_pattern               = "/live/*.m3u8"
    target_origin_id           = local.origin_id
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = true
    cache_policy_id            = aws_cloudfront_cache_policy.playlists.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.this.id
  }

  ordered_cache_behavior {
    path_pattern               = "/live/*"
    target_origin_id           = local.origin_id
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = false
    cache_policy_id            = aws_cloudfront_cache_policy.media.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.this.id
  }

  default_cache_behavior {
    target_origin_id           = local.origin_id
    viewer_protocol_policy     = "redirect-to-https"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    compress                   = true
    cache_policy_id            = aws_cloudfront_cache_policy.pages.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.this.id
  }

  dynamic "logging_config" {
    for_each = var.logging_bucket_domain_name == null ? [] : [var.logging_bucket_domain_name]
    content {
      bucket          = logging_config.value
      prefix          = "${var.name}/"
      include_cookies = false
    }
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    cloudfront_default_certificate = var.acm_certificate_arn == null
    acm_certificate_arn            = var.acm_certificate_arn
    ssl_support_method             = var.acm_certificate_arn == null ? null : "sni-only"
    minimum_protocol_version       = var.acm_certificate_arn == null ? "TLSv1" : "TLSv1.2_2021"
  }

  lifecycle {
    precondition {
      condition     = var.origin_read_timeout_seconds > 3 * var.target_duration_seconds
      error_message = "origin_read_timeout_seconds must exceed 3 × target_duration_seconds: blocking playlist requests are held that long."
    }

    precondition {
      condition     = length(var.aliases) == 0 || var.acm_certificate_arn != null
      error_message = "aliases need acm_certificate_arn (a us-east-1 certificate)."
    }
  }
}
