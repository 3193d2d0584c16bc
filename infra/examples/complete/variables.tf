variable "region" {
  description = "AWS region for everything but the CloudFront certificate (always us-east-1)."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name prefix for every resource."
  type        = string
  default     = "townsquare"
}

variable "domain_name" {
  description = "An existing Route 53 public hosted zone (e.g. example.com); the example creates control., rtmp., listen. (and edge-origin. with the CDN) below it."
  type        = string
}

variable "image" {
  description = "townsquare container image built from the repository's Dockerfile and pushed to a registry the tasks can pull from (e.g. ECR), with an immutable tag."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR of the VPC the example creates."
  type        = string
  default     = "10.42.0.0/16"
}

variable "enable_cdn" {
  description = "Put CloudFront in front of the edge fleet (listeners use it; the edge ALB then admits CloudFront only)."
  type        = bool
  default     = true
}

variable "enable_shield" {
  description = "Run an internal shield tier between the edge fleet and the origin, so the origin sees one request per object however many edges there are."
  type        = bool
  default     = true
}

variable "ingest_count" {
  description = "Ingest nodes (tasks). Two or more: a node that stops hands its rooms over, one that dies loses them to another within a lease."
  type        = number
  default     = 2
}

variable "tier_min_count" {
  description = "Fewest origin tier tasks."
  type        = number
  default     = 2
}

variable "tier_max_count" {
  description = "Most origin tier tasks autoscaling may run."
  type        = number
  default     = 6
}

variable "database_instance_class" {
  description = "RDS instance class of the rooms database."
  type        = string
  default     = "db.t4g.medium"
}

variable "database_multi_az" {
  description = "Keep a standby of the rooms database in the second zone."
  type        = bool
  default     = true
}

variable "edge_min_count" {
  description = "Fewest edge tasks."
  type        = number
  default     = 2
}

variable "edge_max_count" {
  description = "Most edge tasks autoscaling may run."
  type        = number
  default     = 10
}

variable "deletion_protection" {
  description = "Protect the load balancers and the rooms database from deletion; set false and apply before `terraform destroy`."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags applied to every resource through the provider's default_tags."
  type        = map(string)
  default     = {}
}
