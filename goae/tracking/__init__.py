"""MLflow tracking for the DVC pipeline: one parent run per pipeline execution, one child per stage.

Split by job: `store` (where, health check, client, retries), `runs` (parent/child runs, run keys,
experiment sync), `log` (metrics, tags, artifacts, curves). This package re-exports their public names.

Knows runs, params and files, never model internals. Depends only on mlflow (imported lazily: the
import alone costs ~1.5 s), PyYAML and the standard library.

Layout (../shared/docs/dvc-mlflow.md §3):
- store: `MLFLOW_TRACKING_URI`, else `sqlite:///<ROOT>/mlflow.db` with ROOT = `DVC_ROOT` (the original
  repo root even inside `--temp`/queue executors) or the cwd. Always absolute: a relative URI under
  `dvc exp run --temp` lands in the executor copy, which DVC deletes.
- parent: found by tag `dvc.pipeline_key` (PIPELINE_RUN_KEY > `exp:<DVC_EXP_NAME>` >
  `repro:<git rev[:8]>:<params hash>`). No run id is ever written to a file: that would dirty DVC deps.
- child: `stage_run(stage, stage_params)`; a failure marks the parent FAILED and re-raises.
- logging helpers retry transient store errors with backoff, then only warn: a tracking hiccup must
  never cost the caller hours of training. Outside `stage_run` they are no-ops.
"""
from goae.config import flatten  # noqa: F401
from goae.tracking.log import (finish_parent, image_grid, log_artifact, log_image_grid,  # noqa: F401
                               log_metrics, set_tags)
from goae.tracking.runs import (StageRun, get_or_create_parent, git_rev, load_params, params_hash,  # noqa: F401
                                pipeline_key, stage_run, sync_exp_refs)
from goae.tracking.store import (DEFAULT_EXPERIMENT, TrackingUnavailable, TrackingWarning,  # noqa: F401
                                 check_tracking_available, experiment_id, experiment_name, tracking_uri)
