# One tier of stateless `townsquare edge` caches behind a load balancer, autoscaled.
# Instantiated once for the public fleet and, optionally, once more with internal = true
# as a shield between that fleet and the origin (edge → shield → origin).

data "aws_region" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

data "aws_ec2_managed_prefix_list" "cloudfront" {
  count = var.restrict_to_cloudfront ? 1 : 0
  name  = "com.amazonaws.global.cloudfront.origin-facing"
}

locals {
  edge_port      = 8080
  container_name = "townsquare-edge"
  cluster_name   = element(split("/", var.cluster_arn), 1)
  listener_port  = var.internal ? local.edge_port : 443

  # Keyed by a name known at plan time: a VPC created in the same apply has no CIDR yet
  # (a set of CIDRs would fail the shield's first plan).
  ingress_cidr_blocks = (
    var.restrict_to_cloudfront ? {} :
    var.ingress_cidr_blocks != null ? { for c in var.ingress_cidr_blocks : c => c } :
    var.internal ? { vpc = data.aws_vpc.this.cidr_block } : { "0.0.0.0/0" = "0.0.0.0/0" }
  )

  # Every key is a field of edge.settings.EdgeSettings (TOWNSQUARE_ + field name);
  # tests/infra/test_settings_drift.py fails the build when one is not.
  container_environment = {
    TOWNSQUARE_HOST             = "0.0.0.0"
    TOWNSQUARE_EDGE_PORT        = local.edge_port
    TOWNSQUARE_EDGE_UPSTREAM    = var.upstream_url
    TOWNSQUARE_EDGE_CACHE_BYTES = coalesce(var.cache_bytes, floor(var.memory / 2) * 1024 * 1024)
    # A shield adds up its edges' audience reports; a public edge must not believe listeners.
    TOWNSQUARE_EDGE_ACCEPT_REPORTS = var.internal ? "true" : "false"
  }

  healthcheck = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${local.edge_port}/healthz', timeout=3)"
}

################################################################################
# Logs and IAM
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:Operational logs of a stateless cache; retention is var.log_retention_days (30 by default) to bound cost.
  #checkov:skip=CKV_AWS_158:KMS for logs is optional (var.log_kms_key_arn); CloudWatch encrypts at rest by default.
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name_prefix        = "${var.name}-exec-"
  description        = "Pulls the image and writes logs for ${var.name}."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# Edges talk HTTP to their upstream only: the task role carries no permissions at all.
resource "aws_iam_role" "task" {
  name_prefix        = "${var.name}-task-"
  description        = "Identity of the ${var.name} process; deliberately without policies."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

################################################################################
# Security groups
################################################################################

resource "aws_security_group" "lb" {
  name_prefix = "${var.name}-lb-"
  description = "townsquare ${var.name} load balancer"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "lb" {
  for_each          = local.ingress_cidr_blocks
  security_group_id = aws_security_group.lb.id
  description       = "Listeners (or the tier below) to ${var.name}"
  ip_protocol       = "tcp"
  from_port         = local.listener_port
  to_port           = local.listener_port
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "lb_cloudfront" {
  count             = var.restrict_to_cloudfront ? 1 : 0
  security_group_id = aws_security_group.lb.id
  description       = "CloudFront origin-facing addresses to ${var.name}"
  ip_protocol       = "tcp"
  from_port         = local.listener_port
  to_port           = local.listener_port
  prefix_list_id    = data.aws_ec2_managed_prefix_list.cloudfront[0].id
}

resource "aws_vpc_security_group_ingress_rule" "lb_http_redirect" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers with a redirect to HTTPS.
  for_each          = var.internal ? {} : local.ingress_cidr_blocks
  security_group_id = aws_security_group.lb.id
  description       = "HTTP, redirected to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "lb_to_task" {
  security_group_id            = aws_security_group.lb.id
  description                  = "To the edge tasks"
  ip_protocol                  = "tcp"
  from_port                    = local.edge_port
  to_port                      = local.edge_port
  referenced_security_group_id = aws_security_group.task.id
}

resource "aws_security_group" "task" {
  name_prefix = "${var.name}-task-"
  description = "townsquare ${var.name} tasks"
  vpc_id      = var.vpc_id
  tags        = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "task" {
  security_group_id            = aws_security_group.task.id
  description                  = "From the ${var.name} load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.edge_port
  to_port                      = local.edge_port
  referenced_security_group_id = aws_security_group.lb.id
}

resource "aws_vpc_security_group_egress_rule" "task_vpc" {
  security_group_id = aws_security_group.task.id
  description       = "To the upstream (origin or shield) inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 0
  to_port           = 65535
  cidr_ipv4         = data.aws_vpc.this.cidr_block
}

resource "aws_vpc_security_group_egress_rule" "task_https" {
  security_group_id = aws_security_group.task.id
  description       = "HTTPS to ECR and CloudWatch Logs through the NAT gateway"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

################################################################################
# Load balancer
################################################################################

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28:A WAF is the operator's choice (attach one to lb_arn, or to the CloudFront distribution).
  #checkov:skip=CKV_AWS_91:Access logs are optional (var.access_logs_bucket); they grow with every part fetched.
  #checkov:skip=CKV2_AWS_20:The public fleet redirects 80 to 443 (aws_lb_listener.http_redirect); an internal shield has nothing to redirect.
  name_prefix                = var.internal ? "tsshd-" : "tsedg-"
  load_balancer_type         = "application"
  internal                   = var.internal
  subnets                    = var.lb_subnet_ids
  security_groups            = [aws_security_group.lb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.deletion_protection
  # Listeners get HTTP/2 from the ALB; the edge process speaks HTTP/1.1 behind it.
  enable_http2 = true
  # Blocking playlist requests are held up to 3 × target duration (6 s); 60 s leaves room.
  idle_timeout = 60
  tags         = merge(var.tags, { Name = var.name })

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:TLS ends at the ALB; the hop to the task stays inside the VPC.
  name_prefix          = var.internal ? "tsshd-" : "tsedg-"
  port                 = local.edge_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  # Spread fresh tasks in gently: their caches start cold.
  slow_start = 30
  tags       = var.tags

  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "https" {
  count             = var.internal ? 0 : 1
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  lifecycle {
    precondition {
      condition     = var.certificate_arn != null
      error_message = "A public edge tier (internal = false) needs certificate_arn."
    }
  }
}

# Prometheus is scraped from inside the VPC (task IP:8080/metrics), never through the public ALB.
resource "aws_lb_listener_rule" "hide_metrics" {
  count        = var.internal ? 0 : 1
  listener_arn = aws_lb_listener.https[0].arn
  priority     = 1
  tags         = var.tags

  condition {
    path_pattern {
      values = ["/metrics", "/metrics/*"]
    }
  }

  action {
    type = "fixed-response"

    fixed_response {
      content_type = "text/plain"
      message_body = "not found"
      status_code  = "404"
    }
  }
}

resource "aws_lb_listener" "http_redirect" {
  count             = var.internal ? 0 : 1
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"
  tags              = var.tags

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

resource "aws_lb_listener" "internal" {
  #checkov:skip=CKV_AWS_2:Shield tier listener inside the VPC; TLS ends at the public edge ALB or CloudFront.
  #checkov:skip=CKV_AWS_103:No TLS on this VPC-internal listener (see CKV_AWS_2).
  count             = var.internal ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = local.edge_port
  protocol          = "HTTP"
  tags              = var.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }
}

################################################################################
# Task, service, autoscaling
################################################################################

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  tags                     = var.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name                   = local.container_name
      image                  = var.image
      essential              = true
      command                = ["edge"]
      readonlyRootFilesystem = true
      # A tiny init as PID 1 forwards SIGTERM and reaps children.
      linuxParameters = { initProcessEnabled = true }
      stopTimeout     = 30

      portMappings = [
        { containerPort = local.edge_port, protocol = "tcp" },
      ]

      environment = [
        for k, v in local.container_environment : { name = k, value = tostring(v) } if v != null
      ]

      # Every listener holds a connection or two open.
      ulimits = [
        { name = "nofile", softLimit = 65536, hardLimit = 65536 },
      ]

      mountPoints = [
        { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ]

      healthCheck = {
        command     = ["CMD", "python", "-c", local.healthcheck]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 10
      }

      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.this.name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = "edge"
        }
      }
    }
  ])
}

resource "aws_ecs_service" "this" {
  name                               = var.name
  cluster                            = var.cluster_arn
  task_definition                    = aws_ecs_task_definition.this.arn
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  propagate_tags                     = "SERVICE"
  desired_count                      = var.desired_count
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 15
  enable_execute_command             = false
  wait_for_steady_state              = false
  tags                               = var.tags

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.task_subnet_ids
    security_groups  = [aws_security_group.task.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this.arn
    container_name   = local.container_name
    container_port   = local.edge_port
  }

  # Autoscaling owns the count after the first apply.
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [
    aws_lb_listener.https,
    aws_lb_listener.internal,
  ]
}

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  resource_id        = "service/${local.cluster_name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_count
  max_capacity       = var.max_count
  tags               = var.tags
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_out_cooldown = 60
    # Scale in slowly: a removed task takes its listeners' connections with it.
    scale_in_cooldown = 300

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "requests" {
  count              = var.requests_per_target == null ? 0 : 1
  name               = "${var.name}-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.requests_per_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.this.arn_suffix}/${aws_lb_target_group.this.arn_suffix}"
    }
  }
}
