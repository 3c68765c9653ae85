//! The broker's errors, and their one mapping to gRPC statuses.

/// Why a broker operation failed. Messages carry a stable code and a hint.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("E-INVALID: {field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    #[error("E-UNKNOWN-TEAM: team {team:?} does not exist; create it with `allotctl team create {team}`")]
    UnknownTeam { team: String },
    #[error("E-NOT-FOUND: {what} does not exist")]
    NotFound { what: String },
    #[error("E-EXISTS: {what} already exists")]
    AlreadyExists { what: String },
    /// The request can never be satisfied by this cluster as it is built.
    #[error("E-IMPOSSIBLE: {reason}")]
    Impossible { reason: String },
    /// Not now: capacity is taken, lost or unhealthy.
    #[error("E-NO-CAPACITY: {reason}")]
    NoCapacity { reason: String },
    #[error("E-STATE: {0}")]
    FailedPrecondition(String),
    /// Larger than a quota limit on its own (the reason carries E-QUOTA-EXCEEDED
    /// or E-NOT-A-LEAF and a hint).
    #[error("{reason}")]
    QuotaExceeded { reason: String },
    /// A quota, teams file or grant that contradicts itself or the tree.
    #[error("E-QUOTA-INVALID: {problems}")]
    InvalidQuota { problems: String },
    /// No credentials, or ones the broker does not know.
    #[error("E-UNAUTHENTICATED: {0}")]
    Unauthenticated(String),
    /// Known caller, not allowed.
    #[error("E-FORBIDDEN: {0}")]
    PermissionDenied(String),
    #[error("E-STORE: the state store is unavailable: {0}; nothing was changed, try again")]
    StoreUnavailable(String),
    #[error("E-NOT-LEADER: this broker lost its leadership; nothing was changed, retry against the leader")]
    NotLeader,
    #[error("E-INTERNAL: {0}")]
    Internal(String),
}

impl From<BrokerError> for tonic::Status {
    fn from(error: BrokerError) -> Self {
        let message = error.to_string();
        match error {
            BrokerError::InvalidArgument { .. } | BrokerError::Impossible { .. } => {
                tonic::Status::invalid_argument(message)
            }
            BrokerError::UnknownTeam { .. } | BrokerError::NotFound { .. } => tonic::Status::not_found(message),
            BrokerError::AlreadyExists { .. } => tonic::Status::already_exists(message),
            BrokerError::NoCapacity { .. } => tonic::Status::resource_exhausted(message),
            BrokerError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            BrokerError::QuotaExceeded { .. } => tonic::Status::resource_exhausted(message),
            BrokerError::InvalidQuota { .. } => tonic::Status::invalid_argument(message),
            BrokerError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            BrokerError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            BrokerError::StoreUnavailable(_) | BrokerError::NotLeader => tonic::Status::unavailable(message),
            BrokerError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

impl From<allot_api::wire::WireError> for BrokerError {
    fn from(error: allot_api::wire::WireError) -> Self {
        BrokerError::InvalidArgument { field: error.field, problem: error.problem }
    }
}
