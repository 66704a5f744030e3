"""SecAgg+ secure aggregation (Bell et al. CCS 2020) as a plain library, no Flower imports.

Flow per round (server `S`, each client `C`, payloads via `encode`/`decode`):

    setup = S.setup()                                   -> C.setup(setup)        (advertise)
    keys  = S.collect_keys(advertise replies)           -> C.share_keys(keys[n])
    fwd   = S.collect_shares(share-keys replies)        -> C.masked_input(fwd[n], vector)
    req   = S.collect_masked(masked-input replies)      -> C.unmask(req[n])
    result = S.collect_unmask(unmask replies)           # SecAggResult: sum only

Parameters come from `resolve_params(n, length, min_nodes=...)`, which derives the neighbour
count and threshold from a `ThreatModel` (Bell et al. 2020's conditions, see `bounds`). See
docs/secure-aggregation.md for the threat model and parameter ranges.
"""

from privacy.secagg.bounds import FailureBounds, ThreatModel, derive_graph, failure_bounds
from privacy.secagg.client import SecAggClient
from privacy.secagg.errors import (
    SecAggAbort,
    SecAggConfigError,
    SecAggError,
    SecAggInputError,
    SecAggProtocolError,
)
from privacy.secagg.local import run_local_round
from privacy.secagg.messages import (
    STAGE_KEY,
    AdvertiseKeysMsg,
    ForwardedSharesMsg,
    KeysMsg,
    MaskedInputMsg,
    SetupMsg,
    ShareKeysMsg,
    UnmaskRequestMsg,
    UnmaskSharesMsg,
    decode,
    encode,
)
from privacy.secagg.params import SecAggParams, resolve_params
from privacy.secagg.quantize import quantization_step
from privacy.secagg.server import SecAggResult, SecAggServer
from privacy.secagg.weighting import pack_weighted, unpack_weighted

__all__ = [
    "STAGE_KEY",
    "AdvertiseKeysMsg",
    "FailureBounds",
    "ForwardedSharesMsg",
    "KeysMsg",
    "MaskedInputMsg",
    "SecAggAbort",
    "SecAggClient",
    "SecAggConfigError",
    "SecAggError",
    "SecAggInputError",
    "SecAggParams",
    "SecAggProtocolError",
    "SecAggResult",
    "SecAggServer",
    "SetupMsg",
    "ShareKeysMsg",
    "ThreatModel",
    "UnmaskRequestMsg",
    "UnmaskSharesMsg",
    "decode",
    "derive_graph",
    "encode",
    "failure_bounds",
    "pack_weighted",
    "quantization_step",
    "resolve_params",
    "run_local_round",
    "unpack_weighted",
]
