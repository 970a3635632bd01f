"""Schemathesis hooks for docs/openapi.yaml: the two rules of the intake that depend on data,
not on the shape of a request, so no schema can state them. Loaded through SCHEMATHESIS_HOOKS
by tests/it/fuzz.rs (and by hand, see that file)."""

import os

import schemathesis
from schemathesis.generation import GenerationMode


@schemathesis.hook
def before_load_schema(context, raw_schema):
    """A bot id must name a bot of the caller's account: generate only the bots that exist
    (ERASURE_FUZZ_BOTS, comma-separated), or every valid body would be a 400 `unknown_bot`."""
    bots = os.environ.get("ERASURE_FUZZ_BOTS")
    if bots:
        raw_schema["components"]["schemas"]["BotId"] = {"type": "string", "enum": bots.split(",")}


@schemathesis.hook
def filter_case(context, case):
    """Two channel entries naming the same channel identity are duplicates to the intake even
    when one carries an extra (ignored) field, which `uniqueItems` cannot see."""
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return True
    entries = case.body.get("userIds") if isinstance(case.body, dict) else None
    if not isinstance(entries, list):
        return True
    pairs = [
        (e.get("channelId"), e.get("channelUserId")) for e in entries if isinstance(e, dict)
    ]
    return len(pairs) == len(set(pairs))
