"""Command-line flags as OmegaConf's dotlist (``llamafactory-cli train it.yaml --key value``, export arguments)."""


def flags_to_dotlist(flags: list[str]) -> list[str]:
    r"""``--key value`` / ``--key=value`` / ``--flag`` after a YAML path -> OmegaConf's ``key=value``."""
    dotlist, i = [], 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--"):
            dotlist.append(flag)
            i += 1
        elif "=" in flag:
            dotlist.append(flag[2:])
            i += 1
        elif i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            dotlist.append(f"{flag[2:]}={flags[i + 1]}")
            i += 2
        else:
            dotlist.append(f"{flag[2:]}=true")
            i += 1

    return dotlist
