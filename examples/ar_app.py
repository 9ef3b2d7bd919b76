"""A small window shaped like AR Live Studio's ``ARApp``, reporting its state over MQTT.

Run: python examples/ar_app.py -c config/monitor_config.yaml
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from publisher import load_config
from publisher.qt import StatusReporter, default_binding

QtWidgets: Any = importlib.import_module(f"{default_binding()}.QtWidgets")
QApplication = QtWidgets.QApplication
QHBoxLayout = QtWidgets.QHBoxLayout
QLabel = QtWidgets.QLabel
QMainWindow = QtWidgets.QMainWindow
QPlainTextEdit = QtWidgets.QPlainTextEdit
QPushButton = QtWidgets.QPushButton
QVBoxLayout = QtWidgets.QVBoxLayout
QWidget = QtWidgets.QWidget


class ARApp(QMainWindow):  # type: ignore[misc,valid-type]
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.setWindowTitle("AR Live Studio")
        self.buttons: dict[str, Any] = {}
        row = QHBoxLayout()
        for name, label, handler in (
                ("start_camera", "Start camera", self.start_camera),
                ("stop_camera", "Stop camera", self.stop_camera),
                ("start_audio", "Start audio", self.start_audio),
                ("stop_audio", "Stop audio", self.stop_audio),
                ("select_image", "Load face", self.select_image)):
            button = QPushButton(label)
            button.clicked.connect(handler)
            self.buttons[name] = button
            row.addWidget(button)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        layout = QVBoxLayout()
        layout.addLayout(row)
        layout.addWidget(self.log)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)
        self.indicator = QLabel("monitoring: connecting…")
        self.statusBar().addPermanentWidget(self.indicator)

        self.status = StatusReporter(config, self)
        self.status.linkChanged.connect(self.on_link_changed)
        self.status.publishFailed.connect(self.log.appendPlainText)

    def on_link_changed(self, connected: bool, reason: str) -> None:
        self.indicator.setText("monitoring: connected" if connected
                               else f"monitoring: reconnecting ({reason})")

    def start_camera(self) -> None:
        self.log.appendPlainText("camera started")
        self.status.update_gui_status(video_running=True)

    def stop_camera(self) -> None:
        self.log.appendPlainText("camera stopped")
        self.status.update_gui_status(video_running=False)

    def start_audio(self) -> None:
        self.log.appendPlainText("audio started")
        self.status.update_gui_status(audio_running=True)

    def stop_audio(self) -> None:
        self.log.appendPlainText("audio stopped")
        self.status.update_gui_status(audio_running=False)

    def select_image(self) -> None:
        self.log.appendPlainText("face image loaded")
        self.status.update_gui_status(face_loaded=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="yl-status config (default: $YL_STATUS_CONFIG)")
    args = parser.parse_args()
    app = QApplication(sys.argv)
    window = ARApp(load_config(args.config))
    window.show()
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
