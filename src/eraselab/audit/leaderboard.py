"""``eraselab leaderboard``: audit cards side by side, one row per (concept, defence), as markdown and as a sortable
HTML table; cards made under different protocols are refused, naming the fields that differ.

Rows are ranked within a concept by the strongest attack's after-attack rate (lower is better), then by the
presence of the concept without attack; a defence no attack was run against ranks last (nothing was shown).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from eraselab.audit.card import CARD_SCHEMA_VERSION, markdown_cell, rate_text
from eraselab.errors import EraselabError
from eraselab.report import short_name

# What must be equal for two cards to be ranked together (the suites may differ with the concept, not within one).
PROTOCOL_FIELDS = ("judge", "seeds", "steps", "guidance", "attack_seeds", "threat_model", "budget_unet_evals",
                   "budget_text_encoder_evals")


def read_cards(paths: list[Path]) -> list[dict]:
    """Each path's card: a card.json, or an audit directory holding one."""
    cards = []
    for path in paths:
        file = path / "card.json" if path.is_dir() else path
        if not file.is_file():
            raise EraselabError(f"{path} is neither a card.json nor an audit directory holding one")
        try:
            card = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise EraselabError(f"{file} is not valid JSON ({error.msg})") from None
        if not isinstance(card, dict) or "schema_version" not in card:
            raise EraselabError(f"{file} is not an eraselab card")
        if card["schema_version"] != CARD_SCHEMA_VERSION:
            raise EraselabError(f"{file} is a card of schema {card['schema_version']}, not {CARD_SCHEMA_VERSION}: run "
                                "its audit command again (it resumes from the audit's run) to rewrite it")
        cards.append(card | {"source": str(file)})
    return cards


def check_protocols(cards: list[dict]) -> None:
    """Refuse cards whose protocols differ (the model, the fields of :data:`PROTOCOL_FIELDS`, or the suites of
    one concept), naming every differing field and the cards on each side."""
    first, differ = cards[0], []
    for card in cards[1:]:
        fields = [f"protocol.{name}" for name in PROTOCOL_FIELDS if card["protocol"][name] != first["protocol"][name]]
        if card["model"]["fingerprint"] != first["model"]["fingerprint"]:
            fields.append("model.fingerprint")
        same_concept = next((c for c in cards if c["concept"] == card["concept"]), card)
        if card["protocol"]["suites"] != same_concept["protocol"]["suites"]:
            fields.append(f"protocol.suites (concept {card['concept']})")
        if fields:
            differ.append(f"{card['source']} vs {first['source']}: {', '.join(fields)}")
    if differ:
        raise EraselabError("these cards were made under different protocols, so they cannot be ranked together: "
                            + "; ".join(differ))


def rows(cards: list[dict]) -> list[dict]:
    out = []
    for card in cards:
        efficacy = next((g for g in card["erasure"] if g["metric"] == "efficacy"), None)
        drops = [100 * (g["unedited"]["value"] - g["defended"]["value"]) for g in card["erasure"]
                 if g["metric"] == "specificity" and None not in (g["unedited"]["value"], g["defended"]["value"])]
        strongest = card["strongest_attack"]
        out.append({"concept": card["concept"], "defence": short_name(card["defence"]["label"]),
                    "methods": "+".join(e["method"] or "?" for e in card["defence"]["edits"]) or "-",
                    "guard": card["defence"]["guard"] or "-",
                    "presence": efficacy["defended"] if efficacy else None,
                    "worst_drop_points": round(max(drops), 1) if drops else None,
                    "strongest": strongest["label"] if strongest else "none run",
                    "after": strongest["after"] if strongest else None,
                    "unet_evals": strongest["cost"]["unet_evals"] if strongest else None,
                    "source": card["source"]})
    def rank(row: dict) -> tuple:
        after = row["after"]["value"] if row["after"] else float("inf")
        presence = row["presence"]["value"] if row["presence"] and row["presence"]["value"] is not None else 1.0
        return row["concept"], after, presence
    return sorted(out, key=rank)


COLUMNS = ("concept", "defence", "methods", "guard", "presence", "worst specificity drop (points)",
           "strongest attack", "after attack", "UNet evals")


def _cells(row: dict) -> list[str]:
    return [row["concept"], row["defence"], row["methods"], row["guard"], rate_text(row["presence"]),
            "-" if row["worst_drop_points"] is None else f"{row['worst_drop_points']:+.1f}", row["strongest"],
            rate_text(row["after"]), "-" if row["unet_evals"] is None else f"{row['unet_evals']:,}"]


def leaderboard_markdown(table: list[dict], protocol: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table:
        lines.append("| " + " | ".join(markdown_cell(c) for c in _cells(row)) + " |")
    shown = {k: protocol[k] for k in PROTOCOL_FIELDS}
    return "\n".join([*lines, "", f"Protocol (the same for every row): `{json.dumps(shown, sort_keys=True)}`. "
                      "Ranked within a concept by the strongest attack's after-attack rate, then the presence "
                      "without attack (lower is better); 95% Wilson intervals.", ""])


_SORT = ("<script>document.querySelectorAll('th').forEach((th,i)=>th.onclick=()=>{const b=th.closest('table')"
         ".tBodies[0];const up=th.dataset.up!=='1';th.dataset.up=up?'1':'0';[...b.rows].sort((x,y)=>{const "
         "p=x.cells[i].dataset.key,q=y.cells[i].dataset.key;const n=parseFloat(p)-parseFloat(q);return (isNaN(n)?"
         "p.localeCompare(q):n)*(up?1:-1)}).forEach(r=>b.appendChild(r))});</script>")


def leaderboard_html(table: list[dict], protocol: dict) -> str:
    e = html.escape
    keys = lambda row: [row["concept"], row["defence"], row["methods"], row["guard"],  # noqa: E731
                        (row["presence"] or {}).get("value"), row["worst_drop_points"], row["strongest"],
                        (row["after"] or {}).get("value"), row["unet_evals"]]
    body = "".join("<tr>" + "".join(f"<td data-key='{e(str(k if k is not None else ''))}'>{e(str(c))}</td>"
                                    for c, k in zip(_cells(row), keys(row), strict=True)) + "</tr>" for row in table)
    head = "".join(f"<th title='click to sort'>{e(c)}</th>" for c in COLUMNS)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>eraselab leaderboard</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid "
            "#ccc;padding:3px 8px;font-size:13px}th{background:#f0f0f0;cursor:pointer}</style></head><body>"
            f"<h1>Concept erasure leaderboard</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>Protocol: <code>{e(json.dumps({k: protocol[k] for k in PROTOCOL_FIELDS}, sort_keys=True))}</code>"
            f"</p>{_SORT}</body></html>\n")


def write_leaderboard(paths: list[Path], out: Path) -> list[dict]:
    cards = read_cards(paths)
    if not cards:
        raise EraselabError("give at least one card or audit directory")
    check_protocols(cards)
    table = rows(cards)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(leaderboard_markdown(table, cards[0]["protocol"]))
    (out / "leaderboard.html").write_text(leaderboard_html(table, cards[0]["protocol"]))
    return table
