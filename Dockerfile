# One image for every service of docker-compose.yml: web (this CMD), migrate, worker, safety and
# the sandbox cloud each run it with their own command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Provisioning logs in with asyncssh; the OpenSSH client is for people: with the sandbox profile,
# `docker compose exec worker ssh ...` reaches the sandbox's machines.
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The dependencies alone first (pyproject.toml is their only list), so a code change keeps this layer.
# The project itself runs from /app, never from an installed copy.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY . .
# No collectstatic: Daphne serves /static/ itself from the app and static/ directories
# (ASGIStaticFilesHandler in shopper/asgi.py), so nothing would read STATIC_ROOT.
# The code stays owned by root: the app never writes under /app (the sandbox keeps its state in $HOME).
RUN useradd --create-home shopper
USER shopper
EXPOSE 8000
CMD ["python", "-m", "shopper.serve", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
