# Production monitoring: log-based metrics on what placeid writes (placeid/logs.py: one JSON object a line,
# `severity` + `message` + fields, which Cloud Run turns into severity and jsonPayload.*), Cloud Run's
# built-in metrics of the two 2nd-gen functions (resource cloud_run_revision, service_name = function name)
# and of the training job (resource cloud_run_job), alert policies, and where they notify.
# Every policy's documentation names its section of infra/RUNBOOK.md.
# Needs "monitoring.googleapis.com" and "logging.googleapis.com" in local.services (main.tf).

variable "alert_email" {
  description = "Email address alerts go to; when set, an email notification channel is created. Empty: none."
  type        = string
  default     = ""
}

variable "notification_channels" {
  description = "Existing notification channels alerts also go to: projects/<project>/notificationChannels/<id>, or the bare <id>."
  type        = list(string)
  default     = []
}

variable "alert_ingest_errors_per_5m" {
  description = "Alert when the ingest function writes more than this many log entries of severity ERROR or above in 5 minutes."
  type        = number
  default     = 5
}

variable "alert_ingest_failed_deliveries_per_5m" {
  description = "Alert when more than this many storage events get a 5xx from the ingest function in 5 minutes (each is redelivered)."
  type        = number
  default     = 20
}

variable "alert_quarantined_per_hour" {
  description = "Alert when ingest quarantines more than this many photos in an hour (missing/unknown label, conflicting file name)."
  type        = number
  default     = 20
}

variable "alert_rejected_per_hour" {
  description = "Alert when ingest rejects more than this many photos in an hour (not a usable image, too small, too large)."
  type        = number
  default     = 50
}

variable "alert_predict_5xx_ratio" {
  description = "Alert when more than this fraction of predict requests answer 5xx over 5 minutes (and at least alert_predict_5xx_min_per_5m do)."
  type        = number
  default     = 0.05
}

variable "alert_predict_5xx_min_per_5m" {
  description = "Least number of predict 5xx answers in 5 minutes before the ratio alert may fire (keeps one failure at low traffic quiet)."
  type        = number
  default     = 5
}

variable "alert_predict_p95_latency_ms" {
  description = "Alert when predict's p95 request latency stays above this many ms for 10 minutes (README: p50 about 24 ms for a 12 MP JPEG at 2 cores)."
  type        = number
  default     = 1000
}

variable "alert_model_refresh_failures_per_15m" {
  description = "Alert when predict instances fail to load the serving pointer's model more than this many times in 15 minutes (they keep serving the old one)."
  type        = number
  default     = 10
}

locals {
  # Channels every policy notifies: the email channel (when alert_email is set) and the given ones.
  alert_channels = concat(
    google_monitoring_notification_channel.email[*].name,
    [for c in var.notification_channels : startswith(c, "projects/") ? c : "projects/${var.project_id}/notificationChannels/${c}"],
  )
  runbook = "infra/RUNBOOK.md"

  # Each function's log entries and time series (2nd gen: a Cloud Run service named like the function); the
  # same expression filters logs (Logging query language) and time series (Monitoring filters).
  ingest_resource  = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloudfunctions2_function.ingest.name}\""
  predict_resource = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloudfunctions2_function.predict.name}\""
  # Cloud Run's own per-request log lines (severity ERROR on a 5xx); request_count counts those instead.
  not_request_log = "NOT logName:\"run.googleapis.com%2Frequests\""
}

resource "google_monitoring_notification_channel" "email" {
  count        = var.alert_email != "" ? 1 : 0
  display_name = "${var.name_prefix} alerts (${var.alert_email})"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }
  user_labels = var.labels
  depends_on  = [google_project_service.apis]
}

# -- log-based metrics --------------------------------------------------------------------------------------

# Ingest errors: "dropped malformed storage event" (placeid/ingest.py) and unhandled exceptions (stderr).
resource "google_logging_metric" "ingest_errors" {
  name        = "${var.name_prefix}-ingest-errors"
  description = "Log entries of severity ERROR or above written by the ingest function (not Cloud Run's request log)."
  filter      = "${local.ingest_resource} AND severity>=ERROR AND ${local.not_request_log}"
  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "${var.name_prefix} ingest errors"
  }
  depends_on = [google_project_service.apis]
}

# Ingest outcomes: one "ingested" line per processed event, labelled by its status field
# (accepted, duplicate, near_duplicate, rejected, quarantined).
resource "google_logging_metric" "ingest_outcomes" {
  name        = "${var.name_prefix}-ingest-outcomes"
  description = "Photos the ingest function finished, by outcome (jsonPayload.status of its \"ingested\" log line)."
  filter      = "${local.ingest_resource} AND jsonPayload.message=\"ingested\""
  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "${var.name_prefix} ingest outcomes"
    labels {
      key         = "status"
      value_type  = "STRING"
      description = "accepted, duplicate, near_duplicate, rejected or quarantined"
    }
  }
  label_extractors = {
    status = "EXTRACT(jsonPayload.status)"
  }
  depends_on = [google_project_service.apis]
}

# Predict kept an old model: "model refresh failed; still serving the current model" (placeid/serving.py).
resource "google_logging_metric" "predict_model_refresh_failures" {
  name        = "${var.name_prefix}-predict-model-refresh-failures"
  description = "Predict instances that could not load the model the serving pointer names and kept the previous one."
  filter      = "${local.predict_resource} AND jsonPayload.message=\"model refresh failed; still serving the current model\""
  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "${var.name_prefix} predict model refresh failures"
  }
  depends_on = [google_project_service.apis]
}

# -- alert policies -----------------------------------------------------------------------------------------

# Ingest errors: the function logs errors, or storage events keep failing (5xx, so Eventarc redelivers them).
# A new log-based metric's descriptor appears in Cloud Monitoring some time after the metric is created; an
# alert policy on it created at once fails the first apply ("Cannot find metric(s) that match type").
resource "time_sleep" "log_metrics_propagation" {
  create_duration = "120s"
  depends_on = [google_logging_metric.ingest_errors, google_logging_metric.ingest_outcomes,
  google_logging_metric.predict_model_refresh_failures]
}

resource "google_monitoring_alert_policy" "ingest_errors" {
  display_name          = "${var.name_prefix}: ingest errors"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = var.labels

  conditions {
    display_name = "ingest error log entries > ${var.alert_ingest_errors_per_5m} in 5 min"
    condition_threshold {
      filter                  = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.ingest_errors.name}\""
      comparison              = "COMPARISON_GT"
      threshold_value         = var.alert_ingest_errors_per_5m
      duration                = "0s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  conditions {
    display_name = "ingest 5xx deliveries > ${var.alert_ingest_failed_deliveries_per_5m} in 5 min"
    condition_threshold {
      filter                  = "${local.ingest_resource} AND metric.type=\"run.googleapis.com/request_count\" AND metric.labels.response_code_class=\"5xx\""
      comparison              = "COMPARISON_GT"
      threshold_value         = var.alert_ingest_failed_deliveries_per_5m
      duration                = "0s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    subject   = "${var.name_prefix}: ingest errors"
    mime_type = "text/markdown"
    content   = "The ingest function (`${google_cloudfunctions2_function.ingest.name}`) logs errors or answers storage events with 5xx (Eventarc redelivers them). Runbook: `${local.runbook}`, section **Ingest errors** (#ingest-errors)."
  }

  alert_strategy {
    auto_close = "1800s"
  }
  depends_on = [google_project_service.apis, time_sleep.log_metrics_propagation]
}

# Outcome spikes, one policy per status. Quarantined: many uploads lack a usable place label or clash with a
# labelled file name (they wait for review and are not trained on). Rejected: many uploads are not usable
# images (corrupt, too small, too large) or vanished before ingest.
resource "google_monitoring_alert_policy" "ingest_outcome_spike" {
  for_each = {
    quarantined = { title = "Quarantine spike", per_hour = var.alert_quarantined_per_hour, note = " They wait for review and are not trained on." }
    rejected    = { title = "Rejected spike", per_hour = var.alert_rejected_per_hour, note = "" }
  }
  display_name          = "${var.name_prefix}: ${lower(each.value.title)}"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = var.labels

  conditions {
    display_name = "${each.key} photos > ${each.value.per_hour} in 1 h"
    condition_threshold {
      filter                  = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.ingest_outcomes.name}\" AND metric.labels.status=\"${each.key}\""
      comparison              = "COMPARISON_GT"
      threshold_value         = each.value.per_hour
      duration                = "0s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
      aggregations {
        alignment_period     = "3600s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    subject   = "${var.name_prefix}: ${lower(each.value.title)}"
    mime_type = "text/markdown"
    content   = "More than ${each.value.per_hour} photos were ${each.key} in an hour.${each.value.note} Runbook: `${local.runbook}`, section **${each.value.title}** (#${replace(lower(each.value.title), " ", "-")})."
  }

  alert_strategy {
    auto_close = "1800s"
  }
  depends_on = [google_project_service.apis, time_sleep.log_metrics_propagation]
}

# Predict 5xx: callers get server errors (no servable model, registry unreachable, a crash, no instance).
resource "google_monitoring_alert_policy" "predict_5xx" {
  display_name          = "${var.name_prefix}: predict 5xx"
  combiner              = "AND" # the ratio, and enough failures that it is not one unlucky request
  severity              = "CRITICAL"
  notification_channels = local.alert_channels
  user_labels           = var.labels

  conditions {
    display_name = "predict 5xx ratio > ${var.alert_predict_5xx_ratio} over 5 min"
    condition_threshold {
      filter             = "${local.predict_resource} AND metric.type=\"run.googleapis.com/request_count\" AND metric.labels.response_code_class=\"5xx\""
      denominator_filter = "${local.predict_resource} AND metric.type=\"run.googleapis.com/request_count\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_predict_5xx_ratio
      duration           = "60s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  conditions {
    display_name = "predict 5xx > ${var.alert_predict_5xx_min_per_5m} in 5 min"
    condition_threshold {
      filter          = "${local.predict_resource} AND metric.type=\"run.googleapis.com/request_count\" AND metric.labels.response_code_class=\"5xx\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_predict_5xx_min_per_5m
      duration        = "60s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    subject   = "${var.name_prefix}: predict 5xx"
    mime_type = "text/markdown"
    content   = "The predict function (`${google_cloudfunctions2_function.predict.name}`) answers more than ${var.alert_predict_5xx_ratio * 100}% of requests with 5xx. Runbook: `${local.runbook}`, section **Predict 5xx** (#predict-5xx)."
  }

  alert_strategy {
    auto_close = "1800s"
  }
  depends_on = [google_project_service.apis]
}

# Predict latency: p95 across all instances stays above the threshold (CPU starved, cold starts, slow registry).
resource "google_monitoring_alert_policy" "predict_latency" {
  display_name          = "${var.name_prefix}: predict p95 latency"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = var.labels

  conditions {
    display_name = "predict p95 latency > ${var.alert_predict_p95_latency_ms} ms for 10 min"
    condition_threshold {
      filter          = "${local.predict_resource} AND metric.type=\"run.googleapis.com/request_latencies\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_predict_p95_latency_ms
      duration        = "600s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"          # keeps each series' latency distribution for the window
        cross_series_reducer = "REDUCE_PERCENTILE_95" # p95 of all requests, all revisions and codes together
      }
    }
  }

  documentation {
    subject   = "${var.name_prefix}: predict p95 latency"
    mime_type = "text/markdown"
    content   = "Predict's p95 latency has been above ${var.alert_predict_p95_latency_ms} ms for 10 minutes. Runbook: `${local.runbook}`, section **Predict latency** (#predict-latency)."
  }

  alert_strategy {
    auto_close = "3600s"
  }
  depends_on = [google_project_service.apis]
}

# Stale model: predict cannot load the promoted model and keeps answering with the previous one.
resource "google_monitoring_alert_policy" "predict_model_refresh" {
  display_name          = "${var.name_prefix}: predict serves a stale model"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = var.labels

  conditions {
    display_name = "model refresh failures > ${var.alert_model_refresh_failures_per_15m} in 15 min"
    condition_threshold {
      filter                  = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.predict_model_refresh_failures.name}\""
      comparison              = "COMPARISON_GT"
      threshold_value         = var.alert_model_refresh_failures_per_15m
      duration                = "0s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
      aggregations {
        alignment_period     = "900s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    subject   = "${var.name_prefix}: predict serves a stale model"
    mime_type = "text/markdown"
    content   = "Predict instances cannot load the model the serving pointer names and keep serving the previous one. Runbook: `${local.runbook}`, section **Stale model** (#stale-model)."
  }

  alert_strategy {
    auto_close = "1800s"
  }
  depends_on = [google_project_service.apis, time_sleep.log_metrics_propagation]
}

# Training failed: an execution of the training job ended failed (error exit, timeout, out of memory).
resource "google_monitoring_alert_policy" "training_failed" {
  display_name          = "${var.name_prefix}: training job failed"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = var.labels

  conditions {
    display_name = "failed executions of ${google_cloud_run_v2_job.training.name} > 0"
    condition_threshold {
      filter                  = "resource.type=\"cloud_run_job\" AND resource.labels.job_name=\"${google_cloud_run_v2_job.training.name}\" AND metric.type=\"run.googleapis.com/job/completed_execution_count\" AND metric.labels.result=\"failed\""
      comparison              = "COMPARISON_GT"
      threshold_value         = 0
      duration                = "0s"
      evaluation_missing_data = "EVALUATION_MISSING_DATA_INACTIVE"
      aggregations {
        alignment_period     = "3600s" # the incident stays open about an hour after the failure
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    subject   = "${var.name_prefix}: training job failed"
    mime_type = "text/markdown"
    content   = "An execution of the Cloud Run job `${google_cloud_run_v2_job.training.name}` failed; no new model was promoted and serving is unchanged. Runbook: `${local.runbook}`, section **Training job failed** (#training-job-failed)."
  }

  alert_strategy {
    auto_close = "3600s"
  }
  depends_on = [google_project_service.apis]
}
