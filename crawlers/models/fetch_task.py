"""Seed 003's fetch task: one job for one channel, from S3, FTP, or a web/API source.

Only validated for now; the S3/FTP/web flows that consume it come later. Every
credential is a ``SecretStr`` so that ``repr``, logs and ``model_dump()`` show
``**********``; ``model_dump(mode="json")`` masks them too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, model_validator


class _Config(BaseModel):
    # seed 003 allows "other_optional_fields": unknown keys are kept, not rejected
    model_config = ConfigDict(extra="allow", frozen=True)


class S3SourceConfig(_Config):
    bucket: str = Field(min_length=3)
    remote_path: str = "/"
    access_key: SecretStr
    secret_access_key: SecretStr
    file_pattern: str = "*"


class FtpSourceConfig(_Config):
    host: str = Field(min_length=1)
    username: str = ""
    password: SecretStr = SecretStr("")
    remote_path: str = "/"
    file_pattern: str = "*"


class LoginCredentials(_Config):
    username: str = ""
    password: SecretStr = SecretStr("")


class AuthKeys(_Config):
    api_key: SecretStr | None = None
    bearer_token: SecretStr | None = None


class WebSourceConfig(_Config):
    url: str = Field(pattern=r"^https?://")
    channel_name: str = ""
    login_credentials: LoginCredentials | None = None
    navigation_details: dict[str, object] = Field(default_factory=dict)
    api_documentation_path: str = ""
    auth_keys: AuthKeys | None = None


class _TaskBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._:-]+$")
    channel_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._:-]+$")
    is_new: bool = False
    heal_mode: bool = False
    attempt: int = Field(
        0, ge=0, description="0 for a first dispatch; +1 each time Hydra requeues the task."
    )

    @model_validator(mode="after")
    def _ids_are_folder_names(self) -> _TaskBase:
        # both name folders of the store ({prefix}/{channel_id}/{job_id}/...)
        if {self.job_id, self.channel_id} & {".", ".."}:
            raise ValueError("job_id and channel_id cannot be '.' or '..'")
        return self

    @model_validator(mode="after")
    def _new_channels_are_not_healed(self) -> _TaskBase:
        if self.is_new and self.heal_mode:
            raise ValueError("a task cannot be both is_new and heal_mode")
        return self


class S3FetchTask(_TaskBase):
    source_type: Literal["s3"]
    config: S3SourceConfig


class FtpFetchTask(_TaskBase):
    source_type: Literal["ftp"]
    config: FtpSourceConfig


class WebFetchTask(_TaskBase):
    source_type: Literal["html", "api"]
    config: WebSourceConfig


FetchTask = Annotated[S3FetchTask | FtpFetchTask | WebFetchTask, Field(discriminator="source_type")]

#: validates a raw fetch-task message: ``FETCH_TASK.validate_json(raw)``
FETCH_TASK: TypeAdapter[S3FetchTask | FtpFetchTask | WebFetchTask] = TypeAdapter(FetchTask)
