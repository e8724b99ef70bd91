"""Model cards: data rendered through a template file into Markdown (Hugging Face style front matter)
and a self-contained HTML page (figures embedded as data URIs, no external scripts or styles).

A value the template asks for but the data lacks renders as a visible ``[missing: name]`` placeholder
instead of vanishing.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import jinja2
import markdown

PLACEHOLDER = "[missing: {}]"


class VisiblePlaceholder(jinja2.Undefined):
    """Undefined values print as ``[missing: name]``; loops over them are empty."""

    def __str__(self) -> str:
        return PLACEHOLDER.format(self._undefined_name or "value")

    def __iter__(self):
        return iter(())

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return VisiblePlaceholder(name=f"{self._undefined_name}.{name}")

    __getitem__ = __getattr__


def render_markdown(template: str, context: dict[str, Any]) -> str:
    """Render the Markdown card from ``template`` (Jinja2 text) and ``context``."""
    environment = jinja2.Environment(undefined=VisiblePlaceholder, keep_trailing_newline=True, autoescape=False)
    return environment.from_string(template).render(**context)


def render_html(card_markdown: str, base_dir: Path, title: str) -> str:
    """A self-contained HTML page of a Markdown card; images under ``base_dir`` become data URIs."""
    body_markdown = re.sub(r"\A---\n.*?\n---\n", "", card_markdown, flags=re.DOTALL)  # drop the front matter
    body = markdown.markdown(body_markdown, extensions=["tables", "fenced_code"])

    def embed(match: re.Match) -> str:
        path = base_dir / match.group(1)
        if not path.is_file():
            return f'alt="{PLACEHOLDER.format(match.group(1))}" src=""'
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.45}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
             "img{max-width:100%}code,pre{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")
