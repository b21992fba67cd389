"""Monitoring, shadow mode and the retraining policy (``watch``), the same for every task.

The task measures (its monitoring signals: input drift, prediction drift, live quality; the
evidence for a rollback; how a shadow model compares); the policy here decides: roll back a
failing new champion, or retrain when a trigger fires.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..errors import InputError, RegistryError
from ..settings import write_private
from .labelling import live_quality
from .state import Progress

__all__ = ["monitor", "shadow", "shadow_report", "watch_state", "rollback_check", "watch_once"]


def watch_state(loop: Any) -> dict[str, Any]:
    f = loop.paths.state / "watch.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def monitor(loop: Any) -> dict[str, Any]:
    """The champion's monitoring signals, who sends feedback, and the shadow model's results."""
    ctx = loop.context(None)
    champ = loop.load_champion()
    out = loop.task.monitor(ctx, champ)
    if loop.task.labelling:
        # Users correct wrong answers more often than they confirm right ones: the feedback figure
        # leans low. The audit sample (uniformly random predictions, labelled from the queue) does not.
        if isinstance(out.get("live_accuracy"), dict):
            out["live_accuracy"].update(source="feedback", biased=True, note=(
                "from all feedback: users correct wrong answers more often than they confirm right ones, so this "
                "figure is biased; see live_accuracy_audit"))
        out["live_accuracy_audit"] = live_quality(loop, champ.version, champ.class_names,
                                                  bool(getattr(champ, "regression", False)))
    out["clients"] = [{**c, "trusted": c["client"] not in loop.spec.feedback.untrusted_clients}
                      for c in loop.store.clients()]
    shadowing = loop.registry.alias("shadow")
    if shadowing:
        report = shadow_report(loop, shadowing)
        if report is not None:
            out["shadow"] = report
    return out


def shadow(loop: Any, version: str | None) -> dict[str, Any]:
    """Put ``version`` in shadow mode (it scores live traffic next to the champion, silently),
    or stop shadowing with None."""
    if version is not None and version == loop.registry.champion():
        raise InputError(f"model version {version!r}: is the champion; expected another version to shadow it")
    loop.registry.set_alias("shadow", version, reason="shadow mode" if version else "shadow stopped")
    return {"shadow": version, "champion": loop.registry.champion()}


def shadow_report(loop: Any, version: str) -> dict[str, Any] | None:
    return loop.task.shadow_report(loop.context(None), version)


def rollback_check(loop: Any) -> dict[str, Any] | None:
    """The task's evidence that the champion serves worse than its predecessor (None: no predecessor)."""
    history = loop.registry.champion_history()
    if len(history) < 2:
        return None
    return loop.task.rollback_check(loop.context(None), history[-1], history[-2])


def _live_for_trigger(mon: dict[str, Any], min_audit: int) -> dict[str, Any]:
    """The live accuracy the floor trigger decides on: the audit figure once it has ``min_audit``
    labels (``policy.min_audit_labels``), else the feedback figure, which is biased (said in ``note``)."""
    audit = mon.get("live_accuracy_audit")
    if audit and audit.get("measure") == "accuracy" and audit["n"] >= min_audit:
        return {**audit, "source": "audit"}
    fb = mon["live_accuracy"]
    n = audit["n"] if audit else 0
    note = (f"{n} audit labels, fewer than policy.min_audit_labels ({min_audit}): decided on the feedback figure, "
            "which is biased" if audit else None)
    return {**fb, "source": "feedback", "note": note}


def watch_once(loop: Any, progress: Progress | None, force: bool) -> dict[str, Any]:
    """One policy round (the caller holds the writer lock); see ``Loop.watch_once``."""
    pol = loop.spec.policy
    champion = loop.registry.champion()
    if champion is None:
        raise RegistryError(f"project {str(loop.paths.root)!r}: no champion to watch; "
                            "run 'modelloop run DIR' first")
    rb = rollback_check(loop)
    if rb and rb["rollback"]:
        back = loop.registry.rollback()
        loop.registry.record({"event": "auto_rollback", **rb})
        loop.say(progress, f"[watch] rolled back {rb['champion']} -> {back}: {rb.get('measure', 'live accuracy')} "
                 f"{rb['champion_live']:.4g} vs {rb['predecessor_live']:.4g} (p = {rb['p_value']:.3g})")
        return {"action": "rolled_back", "champion": back, "rollback": rb, "triggers": {}}
    mon = loop.monitor()
    target = pol.live_accuracy_floor if pol.live_accuracy_floor is not None else loop.spec.requirements.target
    if target is None:  # no target: live accuracy no better than the trivial baseline's on the test split
        base = next((c.get("baseline") for c in loop.registry.manifest(champion)["requirements"]["checks"]
                     if c.get("baseline")), None)
        target = base["baseline_value"] if base and loop.spec.requirements.metric == "accuracy" else None
    new = mon["feedback"]["new_since_last_training"]
    live = _live_for_trigger(mon, pol.min_audit_labels)
    triggers = {
        "new_feedback": {"value": new, "threshold": pol.min_new_feedback, "fired": new >= pol.min_new_feedback},
        "drift": {"detected": mon["drift"]["detected"], "fired": pol.retrain_on_drift and mon["drift"]["detected"]
                  and new >= loop.spec.gate.min_feedback_for_evidence},
        "live_accuracy": {"high": live["high"], "floor": target, "source": live["source"],
                          **({"note": live["note"]} if live.get("note") else {}),
                          "fired": live["high"] is not None and target is not None and live["high"] < target},
    }
    out: dict[str, Any] = {"action": "none", "champion": champion, "triggers": triggers, "rollback": rb,
                           "monitor": {"drift": mon["drift"], "live_accuracy": live}}
    fired = [k for k, t in triggers.items() if t["fired"]]
    if not fired:
        loop.say(progress, f"[watch] nothing to do ({new} new labelled feedback, drift "
                 f"{'detected' if mon['drift']['detected'] else 'not detected'})")
        return out
    loop.say(progress, f"[watch] retraining: {', '.join(fired)}")
    state = {**watch_state(loop), "last_retrain_at": time.time()}
    res = loop.retrain(progress=progress, promote=pol.promote == "auto", force=force)
    if res["decision"] == "skipped":
        loop.say(progress, f"[watch] not retrained: {res['reason']}")
        out.update(action="skipped", reason=res["reason"], fired=fired)
        return out
    write_private(loop.paths.state / "watch.json", json.dumps(state))
    loop.registry.record({"event": "watch", "fired": fired, "version": res["version"],
                          "decision": res["decision"]})
    out.update(action="retrained", version=res["version"], decision=res["decision"],
               reasons=res["evidence"]["reasons"], champion=loop.registry.champion(),
               challenger=loop.registry.alias("challenger"))
    return out
