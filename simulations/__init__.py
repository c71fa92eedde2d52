"""Federation scenarios: `runner` (a Flower simulation of the federation on one machine) and
`configs/*.toml` (run-config presets for `fedgckd simulate --config`)."""
