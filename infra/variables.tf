variable "project_id" {
  description = "Google Cloud project that runs placeid."
  type        = string
}

variable "region" {
  description = "Region of the functions, buckets, Artifact Registry and the training job."
  type        = string
  default     = "us-central1"
}

variable "firestore_location" {
  description = "Location of the Firestore database (a region or a multi-region such as nam5 or eur3)."
  type        = string
  default     = "nam5"
}

variable "name_prefix" {
  description = "Prefix of every resource name; bucket names also get the project id appended (they are global)."
  type        = string
  default     = "placeid"
}

variable "raw_retention_days" {
  description = "Days an uploaded photo stays in the raw bucket; the curated copy and the Firestore record remain."
  type        = number
  default     = 90
}

variable "model_versions_kept" {
  description = "Noncurrent object versions kept in the models bucket (rollback beyond the registry's history)."
  type        = number
  default     = 5
}

variable "function_source_dir" {
  description = "Folder holding ingest.zip and predict.zip, made by `placeid package functions --out dist`."
  type        = string
  default     = "../dist"
}

variable "ingest" {
  description = "Ingest function sizing: memory, CPU, timeout (s), instances, concurrent events per instance (infra/README.md, Sizing)."
  type = object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    min_instances   = number
    max_instances   = number
    concurrency     = number
  })
  default = {
    memory          = "512Mi"
    cpu             = "1"
    timeout_seconds = 120
    min_instances   = 0
    max_instances   = 20
    concurrency     = 4
  }
}

variable "predict" {
  description = "Predict function sizing: memory, CPU, timeout (s), instances, concurrent requests per instance (infra/README.md, Sizing)."
  type = object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    min_instances   = number
    max_instances   = number
    concurrency     = number
  })
  default = {
    memory          = "512Mi"
    cpu             = "1"
    timeout_seconds = 30
    min_instances   = 1
    max_instances   = 10
    concurrency     = 8
  }
}

variable "predict_invokers" {
  description = "Principals allowed to call the predict function, e.g. [\"user:ana@example.com\", \"serviceAccount:app@p.iam.gserviceaccount.com\"]."
  type        = list(string)
  default     = []
}

variable "predict_public" {
  description = "Let anyone on the internet call the predict function (allUsers). Off by default."
  type        = bool
  default     = false
}

variable "predict_cors_origins" {
  description = "Browser origins allowed to call the predict function (PLACEID_CORS_ORIGINS), comma-separated, or *."
  type        = string
  default     = ""
}

variable "predict_max_request_bytes" {
  description = "Largest request body the predict function accepts (413 above it)."
  type        = number
  default     = 10485760
}

variable "model_refresh_seconds" {
  description = "How often the predict function re-reads the serving pointer (promote/rollback take effect within it)."
  type        = number
  default     = 30
}

variable "training_image" {
  description = "Container image of the training job at creation; empty = Google's public placeholder job image (no trainer image exists before the first build). Cloud Build sets the real image afterwards, and Terraform ignores later changes."
  type        = string
  default     = ""
}

variable "trainer_images_kept" {
  description = "Trainer images kept in Artifact Registry (the newest); older ones are deleted after 7 days."
  type        = number
  default     = 5
}

variable "training_resources" {
  description = "CPU and memory of the training job's container."
  type = object({
    cpu    = string
    memory = string
  })
  default = {
    cpu    = "8"
    memory = "32Gi"
  }
}

variable "training_args" {
  description = "Arguments of the training command (after `placeid --target cloud`); --promote only moves serving when the new model is not worse."
  type        = list(string)
  default     = ["train", "--promote"]
}

variable "data_bucket" {
  description = "Name (not a gs:// URI) of an existing bucket laid out like ../shared (data/world30/..., data/negatives/..., weights/...): Cloud Build's test data, and mounted read-only at /data in the training job (ImageNet backbones, negative photos). Empty: Terraform creates <prefix>-<project>-data."
  type        = string
  default     = ""
  validation {
    condition     = var.data_bucket == "" || can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", var.data_bucket))
    error_message = "data_bucket is a bucket name such as my-data-bucket, without gs:// or a path."
  }
}

variable "near_features_dimension" {
  description = "Length of the served model's feature vectors (the near-duplicate features index, placeid.neardup.FeatureIndex): 1280 for EfficientNet-Lite0/Lite2 and MobileNetV2. A model with another length needs its own index; until then ingest votes with pHashes only."
  type        = number
  default     = 1280
  validation {
    condition     = var.near_features_dimension >= 1 && var.near_features_dimension <= 2048
    error_message = "near_features_dimension is 1..2048 (Firestore's vector limit)."
  }
}

variable "labels" {
  description = "Labels put on every resource that takes them."
  type        = map(string)
  default     = { app = "placeid" }
}
