"""The ``leadcycle`` console script (placeholder until the CLI lands in this commit series)."""


def main() -> None:
    raise SystemExit("leadcycle: CLI not built yet")
