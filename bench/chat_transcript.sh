#!/usr/bin/env bash
# Check `langadapt chat` in a real terminal: run it inside tmux, type a Persian and an English
# prompt, and write what the pane showed (plus the same conversation in logical order) to a file.
#
#   bash bench/chat_transcript.sh runs/demo/sft                 # -> bench/chat-transcript.txt
#   bash bench/chat_transcript.sh smollm2-135m-instruct /tmp/t.txt
#
# Needs tmux (apt-get install -y tmux) and langadapt on PATH (activate the venv first).
set -euo pipefail
MODEL=${1:?usage: chat_transcript.sh MODEL [OUT]}
OUT=${2:-bench/chat-transcript.txt}
FA=${FA:-"سلام! لطفاً در دو جمله بگو تهران چه شهری است."}
EN=${EN:-"Now say the same in English, in one sentence."}
S=langadapt-chat-$$
SAVE=$(mktemp --suffix=.jsonl)
PANE=$(mktemp)
trap 'tmux kill-session -t $S 2>/dev/null || true; rm -f "$SAVE" "$PANE"' EXIT

prompt_is_back() {  # the pane's last non-empty line is the chat's input prompt again
  for _ in $(seq 1 1800); do
    last=$(tmux capture-pane -p -t "$S" | grep -v '^[[:space:]]*$' | tail -1 || true)
    [[ "$last" == "you›"* ]] && return 0
    sleep 1
  done
  echo "timed out waiting for the chat prompt" >&2; return 1
}

tmux new-session -d -s "$S" -x 100 -y 60 "bash --norc --noprofile"
tmux send-keys -t "$S" "export PS1='$ ' LANG=C.UTF-8 HF_HUB_OFFLINE=1; cd '$PWD'; clear" Enter
sleep 1
tmux send-keys -t "$S" "langadapt chat $MODEL --seed 0 --max-new-tokens 120 --save $SAVE" Enter
prompt_is_back
tmux send-keys -t "$S" "$FA" Enter
sleep 2; prompt_is_back
tmux send-keys -t "$S" "$EN" Enter
sleep 2; prompt_is_back
tmux send-keys -t "$S" "/settings" Enter
sleep 1
tmux send-keys -t "$S" "/exit" Enter
sleep 2
tmux capture-pane -p -J -S - -t "$S" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > "$PANE"

{
  echo "langadapt chat in a real terminal: $(tmux -V), 100x60 pane (tmux itself does no bidi or shaping)"
  echo "Model: $MODEL. Machine: $(nproc)-core CPU, $(free -g | awk '/Mem:/{print $2}') GiB. Date: $(date +%F)."
  echo "Made with: bash bench/chat_transcript.sh $MODEL"
  echo
  echo "Part 1 is what the terminal showed (tmux capture-pane), in DISPLAY order: Persian lines were"
  echo "wrapped, shaped (joined letter forms) and reordered by \`langadapt chat\` (rtl mode \"visual\"),"
  echo "then right-aligned, so they read correctly in a terminal that does no bidi. Opened in a"
  echo "bidi-aware viewer (a browser, GitHub), those lines appear reversed a second time."
  echo "Part 2 is the same conversation in LOGICAL order (the --save file), readable in such viewers."
  echo
  echo "=============================== part 1: the tmux pane ==============================="
  cat "$PANE"
  echo
  echo "====================== part 2: the same exchanges, logical order ======================"
  python3 - "$SAVE" <<'EOF'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    print(f"you› {r['user']}\n{r['model']}› {r['assistant']}\n(finish: {r['finish_reason']})\n")
EOF
} > "$OUT"
echo "wrote $OUT"
