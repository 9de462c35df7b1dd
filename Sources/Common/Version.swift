/// The toolkit's version, printed by `--version` and `/server_info`.
public let toolkitVersion = "0.1.0"
