"""A job as a prediction, Standard Webhooks signatures, and the ``name=model`` alias table."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from replicate.prediction import Prediction
from replicate.webhook import WebhookSigningSecret, Webhooks

from pixelmill.api.errors import REPLICATE_SHAPE, problem_body, status_of
from pixelmill.core import errors
from pixelmill.core.policy import resolve
from pixelmill.core.types import GenerationRequest, JobError, JobRecord, JobStatus, Mode
from pixelmill.jobs.predictions import prediction_view, progress_line, version_id
from pixelmill.outbound.webhooks import encode_body, sign_standard, standard_secret
from pixelmill.settings import Settings
from tests.support.cli import settings_from_flags

CREATED = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def job(status: JobStatus, **fields) -> JobRecord:
    values = dict(id="job_" + "a" * 22, status=status, request=GenerationRequest(prompt="a fox", seed=9, steps=20,
                                                                                  model="sdxl"),
                  created_at=CREATED, mode=Mode.txt2img, steps=20, model="sdxl")
    return JobRecord(**(values | fields))


@pytest.mark.parametrize(("status", "wire"), [
    (JobStatus.queued, "starting"), (JobStatus.running, "processing"), (JobStatus.succeeded, "succeeded"),
    (JobStatus.failed, "failed"), (JobStatus.canceled, "canceled"),
])
def test_statuses_are_the_five_the_client_accepts(status, wire):
    view = prediction_view(job(status), base_url="http://h")
    assert view["status"] == wire
    Prediction(**view)  # the official client's model accepts it


def test_running_job_logs_carry_progress_the_client_parses():
    view = prediction_view(job(JobStatus.running, progress_step=8, progress_total=20, started_at=CREATED))
    progress = Prediction(**view).progress
    assert (progress.percentage, progress.current, progress.total) == (0.4, 8, 20)
    assert "Using seed: 9" in view["logs"] and view["output"] is None
    assert view["metrics"] == {} and view["completed_at"] is None


def test_succeeded_job_has_output_urls_metrics_and_urls():
    done = job(JobStatus.succeeded, started_at=CREATED + timedelta(seconds=1),
               finished_at=CREATED + timedelta(seconds=4), result_ids=["f" * 32], result_seeds=[9], gpu_seconds=2.5)
    view = prediction_view(done, base_url="http://h:8000/")
    assert view["output"] == ["http://h:8000/v1/files/" + "f" * 32]
    assert view["metrics"] == {"predict_time": 2.5, "total_time": 4.0}
    assert view["urls"]["get"] == f"http://h:8000/replicate/v1/predictions/{done.id}"
    assert view["urls"]["cancel"].endswith("/cancel")
    assert view["completed_at"] == "2026-12-01T12:00:04Z"
    assert Prediction(**view).progress.percentage == 1.0
    assert view["model"] == "pixelmill/sdxl" and view["version"] == version_id("pixelmill/sdxl")
    assert view["input"]["prompt"] == "a fox" and view["input"]["num_inference_steps"] == 20


def test_failed_job_carries_its_error():
    view = prediction_view(job(JobStatus.failed, error=JobError(code="oom", message="out of memory")))
    assert view["error"] == "out of memory" and view["output"] is None


def test_progress_line_shape():
    assert progress_line(0, 20) == "  0%|          | 0/20"
    assert progress_line(8, 20) == " 40%|####      | 8/20"
    assert progress_line(20, 20) == "100%|##########| 20/20"


def test_standard_signature_is_what_the_client_validates():
    secret = "a-server-secret"
    body = encode_body({"id": "x", "status": "succeeded"})
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
               "webhook-signature": sign_standard(secret, "msg_1", 1700000000, body)}
    key = WebhookSigningSecret(key=standard_secret(secret))
    assert key.key.startswith("whsec_")
    Webhooks.validate(headers=headers, body=body.decode(), secret=key)
    with pytest.raises(Exception):
        Webhooks.validate(headers=headers, body=json.dumps({"id": "y"}), secret=key)


def test_problem_body_shape_and_statuses():
    invalid = errors.InvalidRequest("n must be between 1 and 10, got 99", param="input.num_outputs")
    status, _ = status_of(invalid, REPLICATE_SHAPE)
    body = problem_body(invalid, status, "req1")
    assert status == 422 and body["title"] == "Input validation failed"
    assert body["detail"].startswith("input.num_outputs: ") and body["invalid_fields"][0]["field"] == "input.num_outputs"
    assert status_of(errors.PayloadTooLarge("big", param="body"), REPLICATE_SHAPE)[0] == 413
    unauthorized = problem_body(errors.Unauthorized("missing API key"), 401, None)
    assert (unauthorized["title"], unauthorized["status"]) == ("Unauthenticated", 401)
    assert REPLICATE_SHAPE.matches("/replicate/v1/predictions") and not REPLICATE_SHAPE.matches("/v1/jobs")


def test_model_aliases_name_equals_model_pairs_reach_the_policy():
    settings = Settings(model_aliases=["dall-e-3", "stability-ai/sdxl=my-sdxl", "abc=stability-ai/sdxl"])
    assert settings.model_alias_pairs == (("stability-ai/sdxl", "my-sdxl"), ("abc", "stability-ai/sdxl"))
    assert settings.bare_model_aliases == {"dall-e-3"}
    policy = settings.policy()
    assert policy.model_aliases == settings.model_alias_pairs
    assert resolve(GenerationRequest(prompt="x", model="stability-ai/sdxl"), policy).model == "my-sdxl"
    assert resolve(GenerationRequest(prompt="x", model="dall-e-3"), policy).model is None  # the default model
    assert resolve(GenerationRequest(prompt="x", model="abc"), policy).model == "my-sdxl"  # alias of an alias
    cycle = Settings(model_aliases=["a=b", "b=a"]).policy()
    assert cycle.alias_target("a") == "b"
    with pytest.raises(ValueError):
        Settings(model_aliases=["broken="])


def test_repeated_model_alias_flags_give_pairs():
    result, settings = settings_from_flags(["--model-aliases", "dall-e-3", "--model-aliases", "stability-ai/sdxl=my-sdxl"])
    assert result.exit_code == 0, result.output
    assert settings.model_alias_pairs == (("stability-ai/sdxl", "my-sdxl"),)
    assert settings.bare_model_aliases == {"dall-e-3"}
