"""A tiny browser for tests: read a page's forms and press one of its buttons, as a person would."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx


@dataclass
class Form:
    """A form as the page shows it: where it goes, its fields and its named buttons."""

    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (name, value)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._button: tuple[str, str] | None = None
        self._label = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(values.get("action", ""), values.get("method", "get").lower()))
        elif tag == "input" and self.forms and "name" in values:
            self.forms[-1].fields[values["name"]] = values.get("value", "")
        elif tag == "button" and self.forms:
            self._button = (values.get("name", ""), values.get("value", ""))
            self._label = ""

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._label += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None and self.forms:
            self.forms[-1].buttons[self._label.strip()] = self._button
            self._button = None


def forms_of(html: str) -> list[Form]:
    """Every form of a page."""
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def press(client: httpx.Client, page: httpx.Response, label: str, **typed: str) -> httpx.Response:
    """Press the button labelled `label` on `page` (after typing `typed` into fields).

    Redirects are not followed: the caller sees where the page sends the browser.
    """
    for form in forms_of(page.text):
        if label in form.buttons:
            data = {**form.fields, **typed}
            name, value = form.buttons[label]
            if name:
                data[name] = value
            url = urljoin(str(page.url), form.action)
            if form.method == "post":
                return client.post(url, data=data, follow_redirects=False)
            return client.get(url, params=data, follow_redirects=False)
    raise AssertionError(f"no button {label!r} on the page: {page.text[:500]}")
