"""Python `logging` records into a logging pipe, in Passenger's line layout (for the
helper agent, which logs through `logging`; the watchdog and the logging agent do
without it, see `log_records`)."""

from __future__ import annotations

import logging
import os

from passenger.common.log_records import LEVEL_LETTERS, LogLineWriter, agent_line


class LogLineHandler(logging.Handler):
    """Sends Python logging records to the main log, in Passenger's line layout."""

    def __init__(self, writer: LogLineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            # Every line gets the header, so no line of a message (an app's output, a
            # traceback) can pass for something else at the start of a line in the log.
            level, pid = LEVEL_LETTERS.get(record.levelno, "I"), record.process or os.getpid()
            source = record.name.rsplit(".", 1)[-1]
            self.writer.write("\n".join(agent_line(level, pid, source, line, record.created)
                                        for line in msg.split("\n")))
        except Exception:
            self.handleError(record)
