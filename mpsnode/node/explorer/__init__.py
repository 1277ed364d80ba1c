"""The explorer: a live, read-only web page and JSON API over a node's own store (docs/EXPLORER.md).

``views`` turns the store into the JSON the CLI's ``--json`` prints; ``app`` serves it with
Starlette on the node's trio loop (hypercorn's trio worker), with server-sent events for live
updates; ``static/`` is the page (plain HTML, CSS and JavaScript, no build step).
"""
