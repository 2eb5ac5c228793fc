#!/bin/sh
# expect.sh [OPTIONS] -- COMMAND...: runs COMMAND and passes when every expectation holds
# (CTest's WILL_FAIL cannot check an exit code, PASS_REGULAR_EXPRESSION cannot tell the
# streams apart). Regular expressions are grep -E, matched line by line.
#   --code N       the exit code is N (default 0)
#   --out RE       stdout has a line matching RE      --no-out RE  stdout has none
#   --err RE       stderr has a line matching RE      --no-err RE  stderr has none
#   --file PATH    PATH exists afterwards and is not empty
code=0
checks=$(mktemp)
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  printf '%s\n%s\n' "$1" "$2" >>"$checks"
  [ "$1" = --code ] && code=$2
  shift 2
done
[ "$1" = "--" ] || { echo "expect.sh: no -- before the command" >&2; exit 64; }
shift
out=$(mktemp) err=$(mktemp)
"$@" >"$out" 2>"$err"
rc=$?
fail=0
[ "$rc" -eq "$code" ] || { echo "FAIL: exit code $rc, expected $code"; fail=1; }
while IFS= read -r what && IFS= read -r arg; do
  case $what in
    --code) ;;
    --out) grep -Eq -- "$arg" "$out" || { echo "FAIL: no stdout line matches: $arg"; fail=1; } ;;
    --no-out) ! grep -Eq -- "$arg" "$out" || { echo "FAIL: a stdout line matches: $arg"; fail=1; } ;;
    --err) grep -Eq -- "$arg" "$err" || { echo "FAIL: no stderr line matches: $arg"; fail=1; } ;;
    --no-err) ! grep -Eq -- "$arg" "$err" || { echo "FAIL: a stderr line matches: $arg"; fail=1; } ;;
    --file) [ -s "$arg" ] || { echo "FAIL: $arg is missing or empty"; fail=1; } ;;
    *) echo "expect.sh: unknown check $what" >&2; fail=1 ;;
  esac
done <"$checks"
if [ $fail = 1 ]; then
  echo "--- command: $*"
  echo "--- stdout:"; head -40 "$out"
  echo "--- stderr:"; head -40 "$err"
else
  echo "ok: $*"
fi
rm -f "$checks" "$out" "$err"
exit $fail
