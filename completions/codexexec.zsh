
#compdef codexexec

_codexexec_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _CODEXEXEC_COMPLETE=complete_zsh codexexec)
}

compdef _codexexec_completion codexexec

