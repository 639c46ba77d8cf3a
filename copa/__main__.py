from copa.cli import run

run()
