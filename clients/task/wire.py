"""What travels between the ServerApp and the ClientApp: message types and record keys.

Both apps import this module (like the task itself), so the two sides cannot drift apart.
Secure-aggregation payloads (from `privacy.secagg`) become a ConfigRecord of scalars plus an
ArrayRecord of arrays, and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privacy.secagg.wire import join_payload, split_payload

# Message types (Flower's `train`, `evaluate` and `query` families).
ADMISSION_QUERY = "query.admission"  # manifest bytes + the node's data check, never data
TRAIN = "train"
EVALUATE = "evaluate"
SECAGG_SETUP = "train.secagg_setup"
SECAGG_SHARE = "train.secagg_share"
SECAGG_MASKED = "train.secagg_masked"
SECAGG_UNMASK = "train.secagg_unmask"

# Record names and keys.
ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
REFUSAL = "refusal"  # ConfigRecord {"reason": ...} of a refused train request
ADMISSION = "admission"  # ConfigRecord {"manifest": bytes, "data-error": str}
REFUSED_KEY = "refused"  # metric: 1 when the node refused (e.g. privacy budget)
WEIGHT_KEY = "aggregation-weight"  # metric: the node's FedAvg weight
EXAMPLES_KEY = "num-examples"
EVAL_PREFIX = "eval-"  # metrics of the global model on the node's validation data

# Secure-aggregation payloads. A message carries this round's stage ("secagg") and, pipelined,
# the next round's setup or keys ("secagg-next"), so a round needs two exchanges, not four.
SECAGG_CFG = "secagg"
SECAGG_NEXT = "secagg-next"


def payload_record(payload: Mapping[str, Any], name: str = SECAGG_CFG,
                   into: RecordDict | None = None) -> RecordDict:
    """A protocol payload as records `name` (scalars) and `name`-arrays, added to `into`."""
    scalars, arrays = split_payload(payload)
    rd = into if into is not None else RecordDict()
    rd[name] = ConfigRecord(scalars)
    if arrays:
        rd[f"{name}-arrays"] = ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()})
    return rd


def has_payload(content: RecordDict, name: str = SECAGG_CFG) -> bool:
    return name in content.config_records


def record_payload(content: RecordDict, name: str = SECAGG_CFG) -> dict[str, Any]:
    """Inverse of `payload_record` (validation happens in the protocol's decode)."""
    scalars = dict(content.config_records.get(name, {}))
    arrays_rec = content.array_records.get(f"{name}-arrays")
    arrays = {k: v.numpy() for k, v in arrays_rec.items()} if arrays_rec is not None else {}
    return join_payload(scalars, arrays)


# --- evaluation and training summaries --------------------------------------------------------
# A node reports what it measured as sums (example count, loss sum, metric sums), never as
# per-example values. In clear they travel as metrics `<prefix>examples`, `<prefix>loss` and
# `<prefix><metric>`; under secure aggregation they ride at the end of the masked vector,
# scaled into [0, 1] by public bounds, so the server learns only the totals.
def summary_metrics(prefix: str, examples: float, loss: float,
                    metrics: Mapping[str, float]) -> dict[str, float]:
    out = {f"{prefix}examples": float(examples), f"{prefix}loss": float(loss)}
    out.update({f"{prefix}{k}": float(v) for k, v in metrics.items()})
    return out


def summary_names(metrics: Mapping[str, Any], prefix: str) -> list[str]:
    """Metric names of a summary in `metrics` (sorted; `examples` and `loss` excluded)."""
    skip = {f"{prefix}examples", f"{prefix}loss"}
    return sorted(k[len(prefix):] for k in metrics if k.startswith(prefix) and k not in skip)


def pack_summary(examples: float, loss: float, metrics: Mapping[str, float],
                 names: list[str], max_weight: float, loss_bound: float) -> list[float]:
    """[examples, loss, metrics...] scaled into [0, 1] for the masked vector."""
    return ([examples / max_weight, loss / (max_weight * loss_bound)]
            + [metrics[n] / max_weight for n in names])


def unpack_summary(values: Any, names: list[str], max_weight: float,
                   loss_bound: float) -> tuple[float, float, dict[str, float]]:
    """Inverse of `pack_summary` on a (secure) sum: (examples, loss sum, metric sums)."""
    v = [float(x) for x in values]
    return (v[0] * max_weight, v[1] * max_weight * loss_bound,
            {n: v[2 + i] * max_weight for i, n in enumerate(names)})
