provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

# CloudFront only accepts certificates from us-east-1.
provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"

  default_tags {
    tags = local.tags
  }
}

data "aws_caller_identity" "current" {}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zones (sorted by name) are used, so a zone added later does not change the subnets.
  state = "available"
}

data "aws_route53_zone" "this" {
  name         = var.domain_name
  private_zone = false
}

locals {
  tags = merge({ Application = "townsquare", Name = var.name }, var.tags)
  azs  = slice(data.aws_availability_zones.available.names, 0, 2)

  control_host = "control.${var.domain_name}"
  rtmp_host    = "rtmp.${var.domain_name}"
  listen_host  = "listen.${var.domain_name}"
  # With the CDN, listeners reach CloudFront at listen.; CloudFront reaches the edges here.
  edge_host = var.enable_cdn ? "edge-origin.${var.domain_name}" : local.listen_host
}

################################################################################
# Network and cluster
################################################################################

module "vpc" {
  #checkov:skip=CKV_TF_1:Registry module pinned by version constraint; .terraform.lock.hcl and the plan pin the release, as terraform-aws-modules examples do.
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 5.0"

  name            = var.name
  cidr            = var.vpc_cidr
  azs             = local.azs
  public_subnets  = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, i)]
  private_subnets = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, i + 10)]

  # Private tasks (edges, shield) pull the image and ship logs through one NAT gateway.
  enable_nat_gateway = true
  single_nat_gateway = true
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

################################################################################
# Storage
################################################################################

module "storage" {
  source = "../../modules/storage"

  bucket_name = "${var.name}-${data.aws_caller_identity.current.account_id}-${var.region}"
  key_prefix  = ""
}

################################################################################
# Certificates and names
################################################################################

resource "aws_acm_certificate" "regional" {
  domain_name               = local.control_host
  subject_alternative_names = [local.edge_host]
  validation_method         = "DNS"

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_acm_certificate" "cdn" {
  count    = var.enable_cdn ? 1 : 0
  provider = aws.us_east_1

  domain_name       = local.listen_host
  validation_method = "DNS"

  lifecycle {
    create_before_destroy = true
  }
}

locals {
  validation_records = merge(
    { for o in aws_acm_certificate.regional.domain_validation_options : o.domain_name => o },
    { for o in flatten(aws_acm_certificate.cdn[*].domain_validation_options) : o.domain_name => o },
  )
}

resource "aws_route53_record" "validation" {
  for_each = local.validation_records

  zone_id         = data.aws_route53_zone.this.zone_id
  name            = each.value.resource_record_name
  type            = each.value.resource_record_type
  records         = [each.value.resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "regional" {
  certificate_arn         = aws_acm_certificate.regional.arn
  validation_record_fqdns = [for o in aws_acm_certificate.regional.domain_validation_options : aws_route53_record.validation[o.domain_name].fqdn]
}

resource "aws_acm_certificate_validation" "cdn" {
  count    = var.enable_cdn ? 1 : 0
  provider = aws.us_east_1

  certificate_arn         = aws_acm_certificate.cdn[0].arn
  validation_record_fqdns = [for o in aws_acm_certificate.cdn[0].domain_validation_options : aws_route53_record.validation[o.domain_name].fqdn]
}

################################################################################
# Services
################################################################################

# The rooms database: rooms, stream-key hashes, epochs, the node directory and the room
# leases of the ingest nodes; the tier finds each room's owner there.
module "database" {
  source = "../../modules/database"

  name       = "${var.name}-rooms"
  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets
  allowed_security_group_ids = {
    ingest = module.origin.security_group_id
    tier   = module.tier.security_group_id
  }

  instance_class      = var.database_instance_class
  multi_az            = var.database_multi_az
  deletion_protection = var.deletion_protection
}

# The ingest nodes: control API, WHIP, RTMP, and the packager and origin of the rooms each
# holds the lease of.
module "origin" {
  source = "../../modules/origin"

  name               = "${var.name}-ingest"
  cluster_arn        = aws_ecs_cluster.this.arn
  image              = var.image
  ingest_count       = var.ingest_count
  vpc_id             = module.vpc.vpc_id
  public_subnet_ids  = module.vpc.public_subnets
  private_subnet_ids = module.vpc.private_subnets
  certificate_arn    = aws_acm_certificate_validation.regional.certificate_arn

  s3_bucket            = module.storage.bucket_id
  s3_key_prefix        = module.storage.bucket_key_prefix
  s3_writer_policy_arn = module.storage.writer_policy_arn

  database_url_secret_arn = module.database.database_url_secret_arn
  origin_client_security_group_ids = {
    tier = module.tier.security_group_id
  }

  public_control_url = "https://${local.control_host}"
  public_rtmp_url    = "rtmp://${local.rtmp_host}:1935"
  public_edge_url    = "https://${local.listen_host}"

  deletion_protection = var.deletion_protection
}

# The origin tier behind the internal origin ALB: the shield's (or the edges') upstream.
module "tier" {
  source = "../../modules/tier"

  name               = "${var.name}-tier"
  cluster_arn        = aws_ecs_cluster.this.arn
  image              = var.image
  vpc_id             = module.vpc.vpc_id
  private_subnet_ids = module.vpc.private_subnets

  s3_bucket            = module.storage.bucket_id
  s3_key_prefix        = module.storage.bucket_key_prefix
  s3_reader_policy_arn = module.storage.reader_policy_arn

  database_url_secret_arn = module.database.database_url_secret_arn

  desired_count = var.tier_min_count
  min_count     = var.tier_min_count
  max_count     = var.tier_max_count

  deletion_protection = var.deletion_protection
}

# A stack applied before the origin tier existed had the internal origin ALB in the origin
# module, in front of the single ingest task: it now fronts the tier, same name and DNS.
moved {
  from = module.origin.aws_lb.origin
  to   = module.tier.aws_lb.this
}

moved {
  from = module.origin.aws_lb_target_group.origin
  to   = module.tier.aws_lb_target_group.this
}

moved {
  from = module.origin.aws_lb_listener.origin
  to   = module.tier.aws_lb_listener.this
}

moved {
  from = module.origin.aws_security_group.origin_alb
  to   = module.tier.aws_security_group.lb
}

# The VPC-wide ingress rules are now keyed "vpc" rather than by the CIDR (the default
# vpc_cidr's here; with another one, the old rules are replaced).
moved {
  from = module.origin.aws_vpc_security_group_ingress_rule.origin_alb["10.42.0.0/16"]
  to   = module.tier.aws_vpc_security_group_ingress_rule.lb["vpc"]
}

moved {
  from = module.shield[0].aws_vpc_security_group_ingress_rule.lb["10.42.0.0/16"]
  to   = module.shield[0].aws_vpc_security_group_ingress_rule.lb["vpc"]
}

module "shield" {
  source = "../../modules/edge"
  count  = var.enable_shield ? 1 : 0

  name            = "${var.name}-shield"
  internal        = true
  cluster_arn     = aws_ecs_cluster.this.arn
  image           = var.image
  vpc_id          = module.vpc.vpc_id
  lb_subnet_ids   = module.vpc.private_subnets
  task_subnet_ids = module.vpc.private_subnets
  upstream_url    = module.tier.origin_internal_url

  desired_count = 2
  min_count     = 2
  max_count     = 4

  deletion_protection = var.deletion_protection
}

module "edge" {
  source = "../../modules/edge"

  name            = "${var.name}-edge"
  cluster_arn     = aws_ecs_cluster.this.arn
  image           = var.image
  vpc_id          = module.vpc.vpc_id
  lb_subnet_ids   = module.vpc.public_subnets
  task_subnet_ids = module.vpc.private_subnets
  certificate_arn = aws_acm_certificate_validation.regional.certificate_arn
  upstream_url    = var.enable_shield ? module.shield[0].url : module.tier.origin_internal_url

  restrict_to_cloudfront = var.enable_cdn

  desired_count = var.edge_min_count
  min_count     = var.edge_min_count
  max_count     = var.edge_max_count

  deletion_protection = var.deletion_protection
}

module "cdn" {
  source = "../../modules/cdn"
  count  = var.enable_cdn ? 1 : 0

  name                = var.name
  origin_domain_name  = local.edge_host
  aliases             = [local.listen_host]
  acm_certificate_arn = aws_acm_certificate_validation.cdn[0].certificate_arn
}

################################################################################
# DNS
################################################################################

resource "aws_route53_record" "control" {
  zone_id = data.aws_route53_zone.this.zone_id
  name    = local.control_host
  type    = "A"

  alias {
    name                   = module.origin.control_lb_dns_name
    zone_id                = module.origin.control_lb_zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "rtmp" {
  zone_id = data.aws_route53_zone.this.zone_id
  name    = local.rtmp_host
  type    = "A"

  alias {
    name                   = module.origin.rtmp_lb_dns_name
    zone_id                = module.origin.rtmp_lb_zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "edge" {
  zone_id = data.aws_route53_zone.this.zone_id
  name    = local.edge_host
  type    = "A"

  alias {
    name                   = module.edge.lb_dns_name
    zone_id                = module.edge.lb_zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "listen" {
  for_each = var.enable_cdn ? toset(["A", "AAAA"]) : toset([])

  zone_id = data.aws_route53_zone.this.zone_id
  name    = local.listen_host
  type    = each.value

  alias {
    name                   = module.cdn[0].distribution_domain_name
    zone_id                = module.cdn[0].distribution_hosted_zone_id
    evaluate_target_health = false
  }
}
