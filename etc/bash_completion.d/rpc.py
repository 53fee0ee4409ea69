# bash completion for pybdev's scripts/rpc.py (and the pybdev-rpc command).
# Install: cp etc/bash_completion.d/rpc.py /etc/bash_completion.d/  (or source it).
_pybdev_rpc() {
    local cur=${COMP_WORDS[COMP_CWORD]} i
    # Complete the command name (the first word that is not an option or its value).
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            -s|-p|-t|-r|-u|--verbose|--password-file|--token-file|--cacert) ((i++)) ;;
            -*) ;;
            *) COMPREPLY=($(compgen -f -- "$cur")); return ;;  # past the command: files
        esac
    done
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "-h -s -p -t -r -v --verbose --dry-run --server -b -u \
            --password-file --token-file --cacert --list-commands" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" --list-commands 2>/dev/null)" -- "$cur"))
    fi
}
complete -F _pybdev_rpc rpc.py scripts/rpc.py ./scripts/rpc.py pybdev-rpc
