"""Lanes: which stages run together in one run, and the tags every such run carries.

Promotion is a lane of its own so that only its runs (and, on Kubernetes, only its pods)
receive the production registry's write credentials; training and scoring never do. Every
launcher of runs (``mmp run --submit``, the landing sensor, the automation sensors, the daily
schedule) takes its run tags from :func:`lane_tags`, so concurrency limits per use case
(``mmp/use_case``) and per-lane pod resources apply whoever launched the run.
"""

from __future__ import annotations

import hashlib
import json
import re

from ..core.spec import UseCaseSpec

USE_CASE_TAG = "mmp/use_case"
LANE_TAG = "mmp/lane"
K8S_CONFIG_TAG = "dagster-k8s/config"
# Run retries (instance `run_retries`) only for run-level failures: a lost pod or node. A run
# that fails to mark keys that were not ok (defs/health.py) would fail the same way again.
RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_on_asset_or_op_failure": "false"}
# Promotion alone gets the production registry's write URI (MMP_PRODUCTION_REGISTRY_WRITE_URI)
# and the service account allowed to read that secret (k8s/base/rbac.yaml).
PROMOTION_WRITE_SECRET = "mmp-production-registry-writer"
PROMOTION_SERVICE_ACCOUNT = "mmp-promoter"
FIRST_KEY_LABEL, LAST_KEY_LABEL = "mmp/first-key", "mmp/last-key"

LANES: dict[str, tuple[str, ...]] = {
    "train": ("raw", "training_set", "model", "evaluation"),
    "promote": ("promoted_model",),
    "score": ("predictions", "published"),
}


def lane_of(stage: str) -> str:
    for lane, stages in LANES.items():
        if stage in stages:
            return lane
    raise KeyError(f"no lane runs stage {stage!r}")


def lane_tags(spec: UseCaseSpec, lane: str, key_range: tuple[str, str] | None = None) -> dict[str, str]:
    """Run tags for a run of ``lane`` of ``spec``: the use case and lane (concurrency limits per
    ``mmp/use_case``), run retries, and the pod that ``K8sRunLauncher`` builds from
    ``dagster-k8s/config``: resources of the lane, the write secret for promotion only, and
    labels naming the key range so each pod can be found by its keys. Other launchers ignore
    ``dagster-k8s/config``."""
    if lane not in LANES:
        raise KeyError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)}")
    resources = spec.resources.for_lane(lane)
    container: dict = {"resources": {"requests": resources.requests.as_k8s(), "limits": resources.limits.as_k8s()}}
    pod: dict = {}
    if lane == "promote":
        container["env_from"] = [{"secret_ref": {"name": PROMOTION_WRITE_SECRET}}]
        pod["service_account_name"] = PROMOTION_SERVICE_ACCOUNT
    labels = {"mmp/use-case": label_value(spec.name), "mmp/lane": lane}
    annotations = {}
    if key_range is not None:
        first, last = key_range
        labels |= {FIRST_KEY_LABEL: label_value(first), LAST_KEY_LABEL: label_value(last)}
        annotations = {FIRST_KEY_LABEL: first, LAST_KEY_LABEL: last}  # exact keys; labels may be shortened
    metadata = {"labels": labels, **({"annotations": annotations} if annotations else {})}
    k8s = {
        "container_config": container,
        "pod_spec_config": pod,
        "pod_template_spec_metadata": metadata,
        "job_metadata": metadata,
    }
    return {USE_CASE_TAG: spec.name, LANE_TAG: lane, **RETRY_TAGS, K8S_CONFIG_TAG: json.dumps(k8s, sort_keys=True)}


def label_value(text: str) -> str:
    """``text`` as a Kubernetes label value (at most 63 of ``[A-Za-z0-9_.-]``, alphanumeric at
    both ends). Partition keys may hold ``%`` and ``~`` or be long: those are replaced and cut,
    with a hash of the full text so two keys never share a label."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    if clean == text and len(text) <= 63 and re.fullmatch(r"([A-Za-z0-9].*)?[A-Za-z0-9]|[A-Za-z0-9]?", text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    head = clean[: 63 - len(digest) - 1].strip("_.-")
    return f"{head}-{digest}" if head else digest
