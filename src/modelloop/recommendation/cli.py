"""How the command line shows recommendation results (the ``modelloop`` CLI calls these)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["headline", "print_demo"]


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def headline(m: dict[str, Any]) -> str:
    """NDCG@10, precision@10, recall@10 (and RMSE on explicit ratings) in one line."""
    return (f"NDCG@10 {m['ndcg@10']:.4f}, precision@10 {m['precision@10']:.4f}, recall@10 {m['recall@10']:.4f}"
            + (f", RMSE {m['rmse']:.4f}" if m.get("rmse") is not None else ""))


def print_demo(out, res: dict[str, Any]) -> None:
    t = Table(title="modelloop demo: recommendation (MovieLens-100k)")
    for col in ("version", "alias", "test NDCG@10", "parent", "feedback examples"):
        t.add_column(col)
    for v in res["versions"]:
        t.add_row(v["version"], ",".join(v["aliases"]), _num(v["test_ndcg@10"]), v["parent"] or "-",
                  str(v["feedback_examples"]))
    out.print(t)
    tr = res["traffic"]
    out.print(f"live traffic: {tr['requests']} recommendation requests ({tr['new_users']} from new users, served "
              f"by the popularity fallback), {tr['clicks']} clicks on recommended items")
    out.print(f"gate decision: [bold]{res['decision']}[/bold] ({'; '.join(res['reasons'])})")
    out.print(f"champion: {res['champion']} (served after retrain: {res['served_after_retrain']})")
    out.print(f"reports: {', '.join(res['reports'])}\ntook {res['seconds']} s")
