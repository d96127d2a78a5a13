"""Render what the `slack` and `email` sinks send for Volt's failed-delivery example, for the
README: `uv run python docs/render_examples.py` writes docs/examples/ and prints the Block Kit
Builder link. With `--png` it also renders the mail's HTML part to a PNG in headless Chromium
(Debian: `apt-get install chromium`).

tests/test_docs.py checks that the README and docs/examples/ show exactly what the sinks build
today, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from email.message import EmailMessage
from pathlib import Path

from voltd import Event
from voltd.testing import volt_examples

HERE = Path(__file__).resolve().parent
OUT = HERE / "examples"
#: Slack's Block Kit Builder shows a message carried in the URL's fragment.
BUILDER = "https://app.slack.com/block-kit-builder/#"
ZONE = "America/New_York"
#: The `[numbers]` names of voltd.testing's examples.
NUMBERS = {"+15555550123": "front-desk", "+15555550145": "sales"}


def failed_example() -> Event:
    """Volt's failed-delivery example, as the sinks get it."""
    return next(e for e in volt_examples() if e.status == "failed")


def slack_message() -> dict[str, object]:
    """The JSON the `slack` sink posts for the failed example."""
    from voltd_slack import message_for

    return dict(message_for(failed_example(), timezone=ZONE, numbers=NUMBERS))


def builder_link(message: dict[str, object]) -> str:
    """A Block Kit Builder link that opens with `message`'s blocks rendered."""
    payload = json.dumps({"blocks": message["blocks"]}, separators=(",", ":"), ensure_ascii=False)
    return BUILDER + urllib.parse.quote(payload, safe="")


def email_message() -> EmailMessage:
    """The mail the `email` sink sends for the failed example."""
    from voltd_email import build_message

    options = {
        "host": "smtp.example.com",
        "from": "voltd@example.com",
        "to": ["ops@example.com"],
        "timezone": ZONE,
    }
    return build_message(failed_example(), options, sink="ops-mail", numbers=NUMBERS)


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text and the HTML part."""
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    return str(text.get_content()), str(html.get_content())


def render_png(html: str, png: Path) -> None:
    """Screenshot `html` in headless Chromium (no network: the page is self-contained)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium here: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "mail.html"
        page.write_text(html, encoding="utf-8")
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp}/profile",
                "--hide-scrollbars",
                "--window-size=760,340",
                f"--screenshot={png}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", action="store_true", help="also render the HTML part to PNG")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    message = slack_message()
    (OUT / "slack-failed.json").write_text(
        json.dumps(message, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    text, html = parts(email_message())
    (OUT / "email-failed.txt").write_text(text, encoding="utf-8")
    (OUT / "email-failed.html").write_text(html, encoding="utf-8")
    if args.png:
        render_png(html, OUT / "email-failed.png")
    print(builder_link(message))
    return 0


if __name__ == "__main__":
    sys.exit(main())
