terraform {
  required_version = ">= 1.5"
  required_providers {
    # Exact pins: the arguments used here are checked against this version's schema (tests/test_infra_schema.py,
    # infra/provider_schema/); the first `terraform init` writes .terraform.lock.hcl, which is committed.
    google = {
      source  = "hashicorp/google"
      version = "= 6.50.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "= 6.50.0"
    }
    time = {
      source  = "hashicorp/time"
      version = "= 0.12.1"
    }
  }
  # State lives in a versioned bucket made once per project (infra/README.md, "Bootstrap"):
  #   terraform init -backend-config=bucket=MY-PROJECT-tfstate
  backend "gcs" {
    prefix = "placeid"
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}
