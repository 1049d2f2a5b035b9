"""A document is checked as a whole before anything changes; every problem names file, line
and field, and never quotes a value."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.configuration.loader import MAX_DEPTH, DocumentInvalid, Problem, load
from tests.configuration.conftest import EMPTY, apply_text, snapshot
from tests.conftest import create_secret


def dedent(text: str) -> str:
    """The document as written in the test, without the indentation of the test's code."""
    return textwrap.dedent(text).lstrip("\n")


async def problems_of(app: FastAPI, text: str, **options: Any) -> list[Problem]:
    """The problems applying `text` reports (it must be refused)."""
    with pytest.raises(DocumentInvalid) as caught:
        await apply_text(app, text, file="config/tokenfarm.yaml", **options)
    return caught.value.problems


def where(problems: list[Problem]) -> list[tuple[int | None, str]]:
    """(line, path) of each problem, in order."""
    return [(p.line, p.path) for p in problems]


def message(problems: list[Problem], path: str) -> str:
    """The message of the problem at `path`."""
    return next(p.message for p in problems if p.path == path)


class TestSyntax:
    def test_a_yaml_error_names_its_line_and_never_quotes_the_text(self) -> None:
        text = dedent(
            """
            version: 1
            secrets:
              - name: A
               description: canary-3f1a
            """
        )
        with pytest.raises(DocumentInvalid) as caught:
            load(text, "bad.yaml")
        (problem,) = caught.value.problems
        assert problem.file == "bad.yaml" and problem.line == 4
        assert str(problem).startswith("bad.yaml:4: not valid YAML")
        assert "canary" not in str(caught.value.message)

    def test_a_key_given_twice_is_refused(self) -> None:
        text = dedent(
            """
            version: 1
            secrets:
              - name: A
                locked: true
                locked: false
            """
        )
        with pytest.raises(DocumentInvalid) as caught:
            load(text, "twice.yaml")
        assert [str(p) for p in caught.value.problems] == [
            "twice.yaml:5: secrets[0].locked: given twice (first on line 4)"
        ]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("", "twice.yaml:1: the document is empty; it must be a mapping"),
            ("- version: 1\n", "twice.yaml:1: the document is a list"),
            ("secrets: []\n", "twice.yaml:1: version: Field required"),
            ("version: 2\n", "twice.yaml:1: version: unsupported version 2"),
        ],
    )
    def test_the_document_must_be_a_mapping_of_version_1(self, text: str, expected: str) -> None:
        with pytest.raises(DocumentInvalid) as caught:
            load(text, "twice.yaml")
        assert str(caught.value.problems[0]).startswith(expected)

    def test_a_character_yaml_does_not_allow_is_refused_with_its_line(self) -> None:
        with pytest.raises(DocumentInvalid) as caught:
            load("version: 1\nroles: [{name: a\x0b}]\n", "ctrl.yaml")
        assert [str(p) for p in caught.value.problems] == [
            "ctrl.yaml:2: not valid YAML: character U+000B is not allowed"
        ]

    def test_aliases_that_expand_into_a_huge_document_are_refused(self) -> None:
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
        with pytest.raises(DocumentInvalid) as caught:
            load("\n".join(lines), "bomb.yaml")
        assert "too large once its aliases expand" in caught.value.message

    @pytest.mark.parametrize(
        "nested",
        ["[" * 2000 + "]" * 2000, "{a: " * 2000 + "1" + "}" * 2000, "[" * (MAX_DEPTH + 1)],
        ids=["lists", "mappings", "unclosed"],
    )
    def test_a_document_nested_too_deep_is_refused_with_its_line(self, nested: str) -> None:
        # 2,000 levels exhausted Python's stack while composing (a RecursionError, a 500).
        with pytest.raises(DocumentInvalid) as caught:
            load(f"version: 1\nroles: []\nsecrets: {nested}\n", "deep.yaml")
        assert [str(p) for p in caught.value.problems] == [
            f"deep.yaml:3: the document nests deeper than {MAX_DEPTH} levels"
        ]

    def test_nesting_up_to_the_limit_is_read(self) -> None:
        depth = MAX_DEPTH - 1  # the document's own mapping is the first level
        with pytest.raises(DocumentInvalid) as caught:
            load("version: 1\nsecrets: " + "[" * depth + "]" * depth, "deep.yaml")
        assert "nests deeper" not in caught.value.message
        assert "secrets[0]" in caught.value.message


class TestSchema:
    async def test_every_shape_problem_at_once_with_file_line_and_field(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        before = await snapshot(client)
        text = dedent(
            """
            version: 1
            roles:
              - name: ops
                permissions: [secrets.mange]
            secrets:
              - name: A
                descripton: typo
              - name: B
                value: canary-inline-77d0
              - name: C
                locked: maybe
              - name: D
                value_from: {env: X, file: y.txt}
            schedules:
              - name: bad
                service: svc
                endpoint: go
                cron: "61 * * * *"
                timezone: Mars/Olympus
                run_as: bot
              - name: no-cron
                run_as: bot
            """
        )
        problems = await problems_of(app, text)
        assert where(problems) == [
            (4, "roles[0].permissions[0]"),
            (7, "secrets[0].descripton"),
            (9, "secrets[1].value"),
            (11, "secrets[2].locked"),
            (13, "secrets[3].value_from"),
            (18, "schedules[0].cron"),
            (19, "schedules[0].timezone"),
            (21, "schedules[1].cron"),
        ]
        assert all(p.file == "config/tokenfarm.yaml" for p in problems)
        assert "did you mean 'secrets.manage'" in message(problems, "roles[0].permissions[0]")
        assert message(problems, "secrets[0].descripton") == "unknown field"
        assert "use value_from: {env: NAME}" in message(problems, "secrets[1].value")
        assert "exactly one of env or file" in message(problems, "secrets[3].value_from")
        assert "unknown time zone" in message(problems, "schedules[0].timezone")
        assert str(problems[0]).startswith("config/tokenfarm.yaml:4: roles[0].permissions[0]: ")
        assert all("canary" not in str(p) for p in problems)
        assert await snapshot(client) == before

    async def test_an_inline_value_is_refused_even_when_empty(self, app: FastAPI) -> None:
        problems = await problems_of(app, "version: 1\nsecrets:\n  - name: A\n    value:\n")
        assert where(problems) == [(4, "secrets[0].value")]
        assert "inline value is refused" in problems[0].message

    async def test_an_action_error_points_into_the_action(self, app: FastAPI) -> None:
        text = dedent(
            """
            version: 1
            services:
              - slug: svc
                name: Service
                endpoints:
                  - readable_id: go
                    name: Go
                    action:
                      - type: log
                        message: hi
                      - type: teleport
            """
        )
        problems = await problems_of(app, text)
        assert where(problems) == [(11, "services[0].endpoints[0].action[1]")]
        assert "unknown node type 'teleport'" in problems[0].message


class TestReferences:
    async def test_every_broken_reference_at_once_and_nothing_changes(
        self, app: FastAPI, client: httpx.AsyncClient, tmp_path: Path
    ) -> None:
        before = await snapshot(client)
        text = dedent(
            """
            version: 1
            roles:
              - name: owner
              - name: fine
            service_accounts:
              - name: bot
                roles: [ghost-role]
            secrets:
              - name: TOKEN
                refresh_endpoint: nowhere/refresh
                refresh_as: ghost
              - name: FROM_ENV
                value_from: {env: TF_MISSING_VARIABLE}
              - name: FROM_FILE
                value_from: {file: missing.txt}
              - name: PRESET
                refresher:
                  preset: oauth2_client_credentials
                  params:
                    token_url: https://auth.example.com/token
                    client_id_secret: NOPE
                    client_secret_secret: TOKEN
              - name: PRESET_TWO
                refresher:
                  preset: oauth2_refresh_token
                  params: {client_id_secret: TOKEN, refresh_token_secret: TOKEN}
            services:
              - slug: svc
                name: Service
                endpoints:
                  - readable_id: go
                    name: Go
                    action:
                      - type: log
                        message: hi
                      - type: update_secret
                        secret: UNKNOWN_SECRET
                        value: x
            schedules:
              - name: s1
                service: svc
                endpoint: missing
                cron: "* * * * *"
                run_as: nobody
              - name: s2
                secret: FROM_ENV
                cron: "* * * * *"
                run_as: bot
              - name: s3
                cron: "* * * * *"
                run_as: bot
              - name: s1
                service: svc
                endpoint: go
                cron: "* * * * *"
                run_as: bot
            """
        )
        problems = await problems_of(app, text, directory=tmp_path)
        assert where(problems) == [
            (3, "roles[0].name"),
            (7, "service_accounts[0].roles[0]"),
            (10, "secrets[0].refresh_endpoint"),
            (11, "secrets[0].refresh_as"),
            (13, "secrets[1].value_from.env"),
            (15, "secrets[2].value_from.file"),
            (21, "secrets[3].refresher.params.client_id_secret"),
            (26, "secrets[4].refresher.params.token_url"),
            (37, "services[0].endpoints[0].action[1].secret"),
            (42, "schedules[0].endpoint"),
            (44, "schedules[0].run_as"),
            (46, "schedules[1].secret"),
            (49, "schedules[2]"),
            (52, "schedules[3].name"),
        ]
        by_path = {p.path: p.message for p in problems}
        assert "built-in role" in by_path["roles[0].name"]
        assert "role 'ghost-role' does not exist" in by_path["service_accounts[0].roles[0]"]
        assert "service 'nowhere' does not exist" in by_path["secrets[0].refresh_endpoint"]
        assert "service account 'ghost' does not exist" in by_path["secrets[0].refresh_as"]
        assert by_path["secrets[1].value_from.env"] == (
            "the environment variable TF_MISSING_VARIABLE is not set"
        )
        assert "file 'missing.txt' can't be read" in by_path["secrets[2].value_from.file"]
        assert (
            "secret 'NOPE' does not exist"
            in by_path["secrets[3].refresher.params.client_id_secret"]
        )
        assert "Field required" in by_path["secrets[4].refresher.params.token_url"]
        assert (
            "unknown secret 'UNKNOWN_SECRET'"
            in by_path["services[0].endpoints[0].action[1].secret"]
        )
        assert "has no endpoint 'missing'" in by_path["schedules[0].endpoint"]
        assert "service account 'nobody' does not exist" in by_path["schedules[0].run_as"]
        assert "no refresh_endpoint or refresher" in by_path["schedules[1].secret"]
        assert "service and endpoint" in by_path["schedules[2]"]
        assert "declared twice (first on line 40)" in by_path["schedules[3].name"]
        assert await snapshot(client) == before

    async def test_environment_specific_can_not_flip_on_a_secret_with_values(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        await create_secret(client, "HELD", "a-value")
        text = "version: 1\nsecrets:\n  - name: HELD\n    environment_specific: false\n"
        problems = await problems_of(app, text)
        assert where(problems) == [(4, "secrets[0].environment_specific")]
        assert "already holds values" in problems[0].message

    async def test_prune_must_not_break_what_the_document_leaves_alone(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        service = {
            "slug": "kept",
            "name": "Kept",
            "endpoints": [
                {"readable_id": "go", "name": "Go", "action": [{"type": "log", "message": "x"}]}
            ],
        }
        assert (await client.post("/v1/services", json=service)).status_code == 201
        await create_secret(client, "BOUND", "v", refresh_endpoint="kept/go")
        text = "version: 1\nroles: []\nservices: []\n"
        problems = await problems_of(app, text, prune=True)
        assert where(problems) == [(3, "services")]
        assert "secret 'BOUND' (not in this document) refreshes through it" in problems[0].message
        # Without prune, the service stays and the document is fine.
        assert not (await apply_text(app, text)).changed

    async def test_a_built_in_role_is_never_declared_nor_pruned(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        problems = await problems_of(app, "version: 1\nroles:\n  - name: anonymous\n")
        assert where(problems) == [(3, "roles[0].name")]
        plan = await apply_text(app, EMPTY, prune=True)
        assert plan.count("delete") == 0
        names = {r["name"] for r in (await client.get("/v1/roles")).json()}
        assert names == {"owner", "anonymous"}

    async def test_a_json_value_that_is_not_json_is_refused_without_quoting_it(
        self, app: FastAPI
    ) -> None:
        text = "version: 1\nsecrets:\n  - name: J\n    value_from: {env: TF_J, format: json}\n"
        problems = await problems_of(app, text, env={"TF_J": "{canary-8e2b"})
        assert where(problems) == [(4, "secrets[0].value_from.env")]
        assert "not valid JSON" in problems[0].message
        assert "canary" not in str(problems[0])
