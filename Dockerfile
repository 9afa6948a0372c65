FROM python:3.11-slim
WORKDIR /srv/jobtrail
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir -c constraints.txt .
ENV JOBTRAIL_HTTP_HOST=0.0.0.0
CMD ["jobtrail", "serve"]
