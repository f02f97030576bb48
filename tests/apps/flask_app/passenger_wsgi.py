"""A real Flask app for the tests: an absolute redirect (its scheme shows what Flask
believes) and an upload that reads the whole body."""

from flask import Flask, redirect, request, url_for

app = Flask(__name__)


@app.get("/go")
def go():  # type: ignore[no-untyped-def]
    return redirect(url_for("target", _external=True))


@app.get("/target")
def target():  # type: ignore[no-untyped-def]
    return "target\n"


@app.post("/upload")
def upload():  # type: ignore[no-untyped-def]
    return f"got {len(request.get_data())}\n"


application = app
