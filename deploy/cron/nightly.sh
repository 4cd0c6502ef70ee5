#!/usr/bin/env bash
# Runs one cancel-orders command for cron, from the folder that holds credentials.env:
#   nightly.sh NAME /opt/cancel-orders/bin/cancel-orders run ... --ledger ledgers/NAME.sqlite
# Logs to logs/NAME-DATE.log. Mails nothing on exit 0; the report on exit 1 (finished, some
# orders need a person: a success with a report, and up to 20 of those orders per outcome as
# CSV lines); an alert on exit 2 and above, with the
# reason (the run's last line, `cancel-orders: <reason>`), the ledger and the command that
# shows the report. MAILTO_ADDR names the recipient; MAIL_COMMAND the program that sends
# (default `mail`: Debian's bsd-mailx or mailutils). Without it nothing runs: exit 69, said on
# stderr (cron mails that to the crontab's MAILTO), since an alert could not be sent.
set -u
name=$1
shift
to=${MAILTO_ADDR:-ops@example.org}
mailer=${MAIL_COMMAND:-mail}
if ! command -v "$mailer" >/dev/null 2>&1; then
    echo "nightly.sh $name: '$mailer' is not installed, so no alert could be sent: nothing was run" \
        "(install bsd-mailx or mailutils, or set MAIL_COMMAND)" >&2
    exit 69
fi
mkdir -p logs ledgers
log="logs/$name-$(date +%F).log"
set -a
# shellcheck disable=SC1091
. ./credentials.env
set +a
"$@" >>"$log" 2>&1
status=$?
ledger=
previous=
for arg in "$@"; do
    [ "$previous" = "--ledger" ] && ledger=$arg
    previous=$arg
done
program=$1
report="$program report${ledger:+ --ledger $PWD/$ledger}"
if [ "$status" -eq 1 ]; then
    {
        $report 2>&1
        # the orders a person must look at, 20 of each outcome at most
        $report --format csv 2>/dev/null | awk -F, 'NR > 1 && $2 != "cancelled" &&
            $2 != "already_cancelled" && $2 != "pending" && seen[$2]++ < 20'
    } | "$mailer" -s "cancel-orders $name: finished, some orders need a person" "$to"
elif [ "$status" -ge 2 ]; then
    {
        echo "cancel-orders $name ended with exit $status on $(hostname) at $(date)."
        echo "Reason: $(grep -a '^cancel-orders: ' "$log" | tail -n 1)"
        echo "Ledger: $PWD/$ledger"
        echo "Report: $report"
        echo "Log:    $PWD/$log"
        echo "Exit 2: refused before sending, or the API could not be reached (configuration,"
        echo "input, credentials, network); 3: stopped (fatal answer, outage, failures): fix the"
        echo "reason, then resume with the same command; 4: stopped by a limit: resume with the"
        echo "same command."
    } | "$mailer" -s "cancel-orders $name FAILED (exit $status)" "$to"
fi
exit "$status"
