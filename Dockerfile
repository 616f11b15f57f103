FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shopper shopper
COPY inventory inventory
COPY sessions sessions
COPY costs costs
RUN pip install --no-cache-dir .
COPY . .
RUN SECRET_KEY=build-only DEBUG=False python manage.py collectstatic --noinput
RUN useradd --create-home shopper && chown -R shopper /app
USER shopper
EXPOSE 8000
# The web service; the worker overrides the command (see docker-compose.yml).
CMD ["sh", "-c", "python manage.py migrate --noinput && python manage.py sync_schedules && python -m shopper.serve --host 0.0.0.0 --port 8000 --proxy-headers"]
